"""How the ``objbutler`` command line reports errors: exit codes and one-line messages, in one place.

Every command of :mod:`objbutler.cli` runs inside :func:`report_errors`, so any exception
becomes exactly one ``error: ...`` line on stderr and one of the :class:`ExitCode` values,
never a traceback (with ``OBJBUTLER_DEBUG=1`` the traceback is printed too). Usage errors are
click's own (``Usage: ...`` then ``Error: ...``, exit 2). :data:`EXIT_CODES` says what each
code means; ``objbutler --help`` and ``docs/reference/cli.md`` show that table.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click

from objbutler.errors import (
    AlreadyExistsError,
    BucketNotFoundError,
    ConflictError,
    InvalidURIError,
    NotFoundError,
    ObjButlerError,
    OfflineError,
    PreconditionFailedError,
    RepositoryNotFoundError,
    StoreError,
)

__all__ = ["EXIT_CODES", "ExitCode", "error_message", "exit_code_for", "report_errors"]

DEBUG_VARIABLE = "OBJBUTLER_DEBUG"


class ExitCode(enum.IntEnum):
    """The exit codes of every ``objbutler`` command (see the module docstring)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    CONFLICT = 4
    UNAVAILABLE = 5
    INTERNAL = 70
    INTERRUPTED = 130


EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "done",
    ExitCode.ERROR: "refused as given (wrong data ID keys or kinds, a box that cannot be cut, a file that is "
                    "not FITS, ...), or the command's own verdict (fsck found dangling entries, some datasets "
                    "of a clone or put-many failed)",
    ExitCode.USAGE: "the command line is wrong: unknown option, missing argument, malformed URI, bucket name, "
                    "--data-id, --where or --size, an input file that does not exist, an output in a missing "
                    "directory or with the wrong suffix",
    ExitCode.NOT_FOUND: "not there: repository, bucket or container, dataset type, dataset, run",
    ExitCode.CONFLICT: "already there: a repository, a dataset with that data ID, an output file (add "
                       "--overwrite), a file where a repository goes; or a concurrent writer won",
    ExitCode.UNAVAILABLE: "the store failed or refused: unreachable, timed out, credentials, access denied, "
                          "offline with nothing cached",
    ExitCode.INTERNAL: "an unexpected error (a bug): rerun with OBJBUTLER_DEBUG=1 and report the traceback",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}
"""One line per exit code, for ``objbutler --help`` and the reference page."""


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code an exception ends a command with.

    Parameters
    ----------
    exc : BaseException
        What a command raised.

    Returns
    -------
    ExitCode
    """
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, click.UsageError | InvalidURIError):
        return ExitCode.USAGE
    if isinstance(exc, click.ClickException):
        return ExitCode(exc.exit_code) if exc.exit_code in {int(code) for code in ExitCode} else ExitCode.ERROR
    if isinstance(exc, NotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(exc, AlreadyExistsError | ConflictError | PreconditionFailedError):
        return ExitCode.CONFLICT
    if isinstance(exc, StoreError | OfflineError):
        return ExitCode.UNAVAILABLE
    if isinstance(exc, ObjButlerError):
        return ExitCode.ERROR
    if isinstance(exc, OSError):  # a local file: output, input, cache directory
        if isinstance(exc, FileNotFoundError):
            return ExitCode.NOT_FOUND
        if isinstance(exc, FileExistsError | IsADirectoryError | NotADirectoryError):
            return ExitCode.CONFLICT
        if exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH):
            return ExitCode.UNAVAILABLE
        return ExitCode.ERROR
    return ExitCode.INTERNAL


# Advice that names a Python argument, as the command line spells it.
_CLI_WORDING = (
    ("pass allow_no_atomic_create=True to use", "add --allow-no-atomic-create to use"),
    (": pass run=", ": pass --run RUN"),
    ("pass access_key/secret_key or set ", "set "),
    ("pass auth_url/user/key, or set ", "set "),
)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def _bucket_message(exc: BucketNotFoundError, command: str | None) -> str:
    from objbutler.stores import bucket_name_problem

    kind = "container" if exc.kind == "container" else "bucket"
    scheme = "swift" if kind == "container" else "s3"
    where = f" at {exc.where}" if exc.where else ""
    server = "AWS_ENDPOINT_URL" if scheme == "s3" else "ST_AUTH / OS_AUTH_URL"
    message = f"{kind} {exc.bucket!r} does not exist{where}"
    if command in ("create", "clone"):
        message += f": add --create-{kind} to create it (or check the URI and {server})"
    else:
        message += (f" (check the URI and {server}; `objbutler create --create-{kind} "
                    f"{scheme}://{exc.bucket}/PREFIX` makes it and a repository in it)")
    problem = bucket_name_problem(exc.bucket or "", "s3" if scheme == "s3" else "swift", new=True)
    if problem:
        message += f"; note that a new {kind} cannot have this name: {problem}"
    return message


def error_message(exc: BaseException, command: str | None = None) -> str:
    """The one line (without ``error: ``) that tells a command-line user what went wrong.

    Parameters
    ----------
    exc : BaseException
        What the command raised.
    command : str, optional
        The command's name, for advice that differs between commands.

    Returns
    -------
    str
        One line: no class names of objbutler's internals, advice as command-line options.
    """
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, BucketNotFoundError) and exc.bucket:
        return _bucket_message(exc, command)
    if isinstance(exc, RepositoryNotFoundError) and exc.uri:
        return (f"no objbutler repository at {exc.uri} (no objbutler.json there); "
                f"`objbutler create {exc.uri}` makes one")
    if isinstance(exc, click.ClickException):
        return _one_line(exc.format_message())
    if isinstance(exc, ObjButlerError):
        text = _one_line(str(exc)) or type(exc).__name__
        for python, cli in _CLI_WORDING:
            text = text.replace(python, cli)
        return text
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename if exc.filename is not None else ""
        return f"{name}: {exc.strerror}" if name else exc.strerror
    detail = _one_line(str(exc))
    if isinstance(exc, OSError):
        return detail or type(exc).__name__
    return (f"unexpected {type(exc).__name__}{': ' + detail if detail else ''} "
            f"(a bug in objbutler? run again with {DEBUG_VARIABLE}=1 to see the traceback)")


def _debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no", "off")


def _fail(exc: BaseException, command: str | None) -> NoReturn:
    if _debug():
        traceback.print_exception(exc, file=sys.stderr)
    click.echo(f"error: {error_message(exc, command)}", err=True)
    sys.exit(int(exit_code_for(exc)))


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one ``warning: ...`` line each (not Python's two-line form with source)."""
    click.echo(f"warning: {_one_line(str(message))}", err=True)


@contextlib.contextmanager
def report_errors(command: str | Callable[[], str | None] | None = None) -> Iterator[None]:
    """Run a command's body so that anything it raises ends as one ``error:`` line and an exit code.

    click's usage errors (exit 2) and ``sys.exit`` pass through; everything else is written as
    ``error: <message>`` on stderr and the process exits with :func:`exit_code_for`.

    Parameters
    ----------
    command : str or callable, optional
        The command's name (or a function that tells it once the error happened), for
        advice that differs between commands.
    """
    def name() -> str | None:
        return command() if callable(command) else command

    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            yield
        except (click.UsageError, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except BrokenPipeError:  # `objbutler query ... | head`: the reader left, nothing to report
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's final flush is quiet
            sys.exit(int(ExitCode.ERROR))
        except click.ClickException as exc:
            if _debug():
                traceback.print_exception(exc, file=sys.stderr)
            click.echo(f"error: {error_message(exc, name())}", err=True)
            sys.exit(exc.exit_code)
        except BaseException as exc:  # the one place every error is turned into a line
            if isinstance(exc, GeneratorExit):
                raise
            _fail(exc, name())
