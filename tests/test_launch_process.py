"""The server process as `trtkit launch` starts it: the argv of a recipe that asks for an MPI launcher,
the plugin environment the operator may override, and the exit code a supervisor reports."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from deploy.command import build_command, plugin_env
from deploy.select import RecipeRef
from deploy.supervise import exit_code, supervise

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "catalog" / "gpt-oss-120b" / "h100" / "1k1k_balanced"


def test_a_recipe_asking_for_mpirun_runs_one_mpi_process():
    """launch.mpirun: trtllm-serve runs under `mpirun -n 1` (it spawns its own workers); no wrapper otherwise."""
    r = RecipeRef.load(RECIPE)
    plain = build_command(r, Path("/models/x"), 8000, None, environ={})
    assert plain.mode == "single" and plain.argv[0] == "trtllm-serve"
    mpi = build_command(dataclasses.replace(r, doc={**r.doc, "launch": {"mpirun": True}}), Path("/models/x"), 8000,
                        None, environ={})
    assert mpi.mode == "single-mpirun"
    assert mpi.argv == ("mpirun", "-n", "1", *plain.argv)


@pytest.mark.parametrize("environ, storage", [({}, "auto"), ({"TRTKIT_MOE_STORAGE": "kmajor"}, "kmajor")])
def test_plugin_storage_is_the_operators_choice(environ, storage):
    """TRTKIT_MOE_STORAGE set by the operator reaches the server unchanged; unset, the default (auto: frag on Hopper, else spread)."""
    assert dict(plugin_env(environ))["TRTKIT_MOE_STORAGE"] == storage


@pytest.mark.parametrize("returncode, code", [(0, 0), (7, 7), (-signal.SIGTERM, 143), (-signal.SIGKILL, 137)])
def test_exit_code_reads_like_a_shell(returncode, code):
    """A child killed by signal N is reported as 128 + N (bash: SIGTERM 143, SIGKILL 137)."""
    assert exit_code(returncode) == code


def test_a_server_killed_by_a_signal_exits_128_plus_n():
    child = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    assert supervise(child, None, 60.0, log=lambda m: None, poll_s=0.05) == 128 + signal.SIGKILL


def test_a_stop_signal_during_loading_waits_for_the_server(tmp_path):
    """SIGTERM while the server loads is forwarded; the server's own exit code is returned even when it takes
    longer than the ready timeout to stop (it is shutting down, not hanging)."""
    armed = tmp_path / "armed"
    server = ("import pathlib, signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(4), sys.exit(0)))  # stops in 4 s\n"
              f"pathlib.Path({str(armed)!r}).touch()\n"
              "time.sleep(60)\n")

    before = signal.getsignal(signal.SIGTERM)

    def operator() -> None:  # scancel or kill once the server is up and supervise forwards signals
        while not armed.exists() or signal.getsignal(signal.SIGTERM) is before:  # never kill pytest itself
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=operator, daemon=True).start()
    said: list[str] = []
    code = supervise([sys.executable, "-c", server], "http://127.0.0.1:9/health", 3.0, said.append, poll_s=0.05)
    assert code == 0, said  # not NOT_READY_EXIT: the 3 s ready timeout passed while it was stopping
    assert said == ["server stopped on SIGTERM (exit code 0)"]
