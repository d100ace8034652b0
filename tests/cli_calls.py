"""The `qrecipe` command called in this process, as a test sees it."""

from __future__ import annotations


def cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `qrecipe ARGS...`."""
    from qrecipe.registry.cli import main

    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err
