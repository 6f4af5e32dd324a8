"""The ``objbutler`` command line: thin commands that parse arguments and call library functions."""

from __future__ import annotations

import click

from objbutler import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="objbutler")
def main() -> None:
    """objbutler: object-store-native datasets for astronomy."""


@main.command()
@click.option("--repo", default="./objbutler-demo", show_default=True, help="Where the demo repository goes.")
@click.option("--stamps", default=1000, show_default=True, help="Number of postage stamps to cut.")
@click.option("--size", default=4096, show_default=True, help="Side of the synthetic PVI in pixels.")
@click.option("--png", default=None, help="Write a contact sheet of the first stamps to this PNG file.")
def demo(repo: str, stamps: int, size: int, png: str | None) -> None:
    """Run the end-to-end demo on an embedded local repository."""
    from objbutler.demo import run_demo

    run_demo(repo, n_stamps=stamps, image_size=size, png=png, echo=click.echo)


if __name__ == "__main__":
    main()
