"""`mpiexec -n 2` writes the same bytes as one process; a killed run leaves no OUT; a rerun succeeds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def trtkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "trtkit.cli", *args]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_mpiexec_two_ranks_equals_one(tiny_mxfp4, tmp_path):
    mpiexec = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.fail("mpiexec not found: the mpich wheel (a core dependency) provides it")
    one, two = tmp_path / "one", tmp_path / "two"
    # small shards so that both ranks have several to write
    r1 = subprocess.run(trtkit("convert", "--quiet", "--max-shard-gb", "0.0001", str(tiny_mxfp4), str(one)),
                        capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr
    env = dict(os.environ)
    r2 = subprocess.run([mpiexec, "-n", "2", *trtkit("convert", "--quiet", "--max-shard-gb", "0.0001",
                                                     str(tiny_mxfp4), str(two))],
                        capture_output=True, text=True, timeout=300, env=env)
    assert r2.returncode == 0, r2.stderr + r2.stdout
    a, b = folder_bytes(one), folder_bytes(two)
    assert len([n for n in a if n.endswith(".safetensors")]) >= 4
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name


def test_killed_run_leaves_no_out_and_rerun_succeeds(tmp_path):
    src = tmp_path / "src"
    subprocess.run(trtkit("synth", "--quiet", "--layers", "24", str(src)), check=True, timeout=300)
    out = tmp_path / "out"
    partial = tmp_path / ".out.partial"
    killed_mid_write = False
    for _ in range(5):
        proc = subprocess.Popen(trtkit("convert", "--quiet", "--max-shard-gb", "0.0002", str(src), str(out)))
        deadline = time.time() + 120
        while not partial.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_mid_write = True
            break
        shutil.rmtree(out, ignore_errors=True)  # finished before we could kill it: try again
    assert killed_mid_write, "conversion always finished before it could be killed"
    assert not out.exists()
    r = subprocess.run(trtkit("convert", "--quiet", str(src), str(out)), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.is_dir() and not partial.exists()
    assert (out / "trtkit_manifest.json").is_file()


@pytest.mark.slow
def test_stray_partial_file_under_mpiexec(tiny_mxfp4, tmp_path):
    """A file (not a folder) named .OUT.partial, as an interrupted copy may leave, is replaced; before,
    rank 0 failed on it while rank 1 waited in a barrier for ever."""
    mpiexec = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")
    (tmp_path / ".out.partial").write_text("stray")
    (tmp_path / ".out.old").symlink_to(tmp_path / "nowhere")
    r = subprocess.run([mpiexec, "-n", "2", *trtkit("convert", "--quiet", str(tiny_mxfp4), str(tmp_path / "out"))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr + r.stdout
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_second_run_to_the_same_out_is_refused_while_the_first_writes(tiny_mxfp4, tmp_path):
    """Two runs to one OUT: the second used to delete the first's .OUT.partial, then both wrote into one
    folder, so a renamed OUT could hold a file the other run was still writing. Now it fails at once."""
    from builder.parallel import SerialComm
    from builder.writer import atomic_output

    out = tmp_path / "out"
    with atomic_output(out, False, SerialComm()) as tmp:      # the first run, mid-write
        (tmp / "half-written").write_text("x")
        r = subprocess.run(trtkit("convert", "--quiet", str(tiny_mxfp4), str(out)), capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().splitlines() == [f"trtkit: error: {out}: another trtkit run is writing it (it holds "
                                                 f"{tmp_path / '.out.lock'}); wait for that run to finish or "
                                                 "choose another OUT"]
        assert (tmp / "half-written").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # renamed, lock removed
    assert [p.name for p in out.iterdir()] == ["half-written"]


def test_a_lock_file_left_by_a_killed_run_does_not_block(tiny_mxfp4, tmp_path):
    (tmp_path / ".out.lock").write_text("")                    # SIGKILL leaves the file, never the lock
    r = subprocess.run(trtkit("convert", "--quiet", str(tiny_mxfp4), str(tmp_path / "out")), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_filesystem_without_locks_still_gets_its_output(tmp_path, monkeypatch):
    """flock fails with ENOLCK on NFS without lockd (ENOSYS on Lustre mounted noflock): the write goes on
    unguarded, as before the lock existed, instead of refusing every OUT on such a filesystem."""
    import errno
    import fcntl

    from builder import writer
    from builder.parallel import SerialComm

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with writer.atomic_output(tmp_path / "out", False, SerialComm()) as tmp:
        (tmp / "file").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "file").is_file()

    def broken(fd, op):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(writer.OutputError, match="cannot create OUT"):
        with writer.atomic_output(tmp_path / "out2", False, SerialComm()):
            pass


def test_an_out_finished_by_another_run_while_waiting_for_the_lock_is_not_replaced(tmp_path, monkeypatch):
    """OUT is checked before the lock and again once it is held: a run that finished in between (its OUT
    now in place) must not be replaced without --force."""
    from builder import writer
    from builder.parallel import SerialComm

    out = tmp_path / "out"
    locking = writer._lock_output

    def other_run_finishes_first(lock, out_):
        out_.mkdir()
        (out_ / "theirs").write_text("finished")
        return locking(lock, out_)

    monkeypatch.setattr(writer, "_lock_output", other_run_finishes_first)
    with pytest.raises(writer.OutputError, match="exists and is not empty; pass --force"):
        with writer.atomic_output(out, False, SerialComm()):
            pass
    assert (out / "theirs").read_text() == "finished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
