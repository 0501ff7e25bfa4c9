"""The CLI in-process (click's runner) and the project's one-line error contract, shared by the bad-input tests."""

from __future__ import annotations

from click.testing import CliRunner

from trtkit.cli import main


def trtkit(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line_error(res, code: int, *needles: str) -> str:
    """`res` exited `code` with exactly one `trtkit: error: ` line holding every needle, and no traceback."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    err = res.stderr.strip()
    assert err.startswith("trtkit: error: ") and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err
