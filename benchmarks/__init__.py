"""objbutler benchmarks: run them with ``objbutler bench`` (see README.md here)."""
