"""The CLI in-process (click's runner) and the project's one-line error contract, shared by the bad-input tests."""

from __future__ import annotations

import subprocess
import sys

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


# ---- the console script in a child process (where the exit code and stderr are what a shell sees) ----
TRTKIT = [sys.executable, "-m", "trtkit.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TRTKIT, *args], capture_output=True, text=True, timeout=300)


def error_line(r: subprocess.CompletedProcess) -> str:
    """A domain error: exit 1, exactly one line `trtkit: error: ...` on stderr; that line."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trtkit: error: "), r.stderr
    return lines[0]


def usage_error(r: subprocess.CompletedProcess) -> str:
    """click's usage error: exit 2, no traceback, the reason on the last line."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip().splitlines()[-1]
