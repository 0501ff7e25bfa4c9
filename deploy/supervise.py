"""Run the server as a child: forward SIGINT/SIGTERM, poll its health endpoint until ready (with a
timeout and a clear failure), let its log stream through, and return its exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence

from builder.errors import TrtkitError

NOT_READY_EXIT = 3  # the server never became ready within the timeout
STOP_GRACE_S = 30.0


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:  # noqa: S310 - loopback URL we built
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def exit_code(returncode: int) -> int:
    """A child killed by signal N exits like a shell reports it: 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def supervise(argv: Sequence[str], health_url: str | None, ready_timeout_s: float,
              log: Callable[[str], None], poll_s: float = 0.5, env: Mapping[str, str] | None = None) -> int:
    """env: variables set on top of this process's environment for the server."""
    # stdout/stderr inherited: the server's log streams through
    try:
        proc = subprocess.Popen(list(argv), env={**os.environ, **env} if env else None)
    except OSError as exc:  # not found / not executable: a one-line error, not a traceback
        raise TrtkitError(f"{argv[0]}: cannot start it ({exc.strerror or exc}); check that it is installed "
                          "and on PATH") from None
    forwarded: list[int] = []

    def forward(signum, _frame) -> None:
        forwarded.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ready, deadline = health_url is None, time.monotonic() + ready_timeout_s
        while proc.poll() is None:
            if not ready and healthy(health_url):
                ready = True
                log(f"server ready: {health_url}")
            elif not ready and not forwarded and time.monotonic() > deadline:
                log(f"error: the server was not ready after {ready_timeout_s:.0f} s ({health_url}); stopping it")
                _stop(proc)
                return NOT_READY_EXIT
            time.sleep(poll_s)
        code = exit_code(proc.returncode)
        if not ready and not forwarded:
            log(f"error: the server exited with code {code} before it was ready")
        elif forwarded:
            log(f"server stopped on {signal.Signals(forwarded[0]).name} (exit code {code})")
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
