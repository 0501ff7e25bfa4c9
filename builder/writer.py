"""Writing a sharded checkpoint: shard planning, the index, and all-or-nothing output folders.

Outputs are built in a hidden folder beside OUT (`.OUT.partial`) and renamed into place only when
complete, so a run killed at any moment leaves no OUT, and a rerun starts clean. Under MPI, shards are
dealt round-robin to ranks; every byte depends only on the plan, so any rank count writes identical files.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import torch

from builder.errors import OutputError, TrtkitError
from builder.layout import TensorSpec
from builder.parallel import Comm
from builder.safetensors_io import write_stream

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # 5 GB, as Hugging Face and Model Optimizer shard
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class Shard:
    file: str
    tensors: tuple[TensorSpec, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def plan_shards(tensors: list[TensorSpec], max_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[Shard]:
    """Greedy, in order: start a new shard when the next tensor would pass `max_bytes`."""
    groups: list[list[TensorSpec]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    n = len(groups)
    return [Shard(f"model-{i + 1:05d}-of-{n:05d}.safetensors", tuple(g)) for i, g in enumerate(groups)]


def index_json(shards: list[Shard]) -> dict:
    return {"metadata": {"total_size": sum(s.nbytes for s in shards)},
            "weight_map": {t.name: s.file for s in shards for t in s.tensors}}


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_shards(folder: Path, shards: list[Shard], produce: Callable[[TensorSpec], Iterable[torch.Tensor]],
                 comm: Comm, progress: Callable[[int], None] | None = None) -> dict[str, str]:
    """Write this rank's shards; return {file: sha256} for ALL shards (gathered from every rank).

    A failure on any rank is re-raised on every rank (no rank is left waiting in a collective).
    """
    mine: dict[str, str] = {}
    error: TrtkitError | None = None
    try:
        for i, shard in enumerate(shards):
            if i % comm.size != comm.rank:
                continue

            def counted(spec: TensorSpec) -> Iterator[torch.Tensor]:
                yield from produce(spec)
                if progress:
                    progress(spec.nbytes)

            mine[shard.file] = guard_disk(lambda s=shard: write_stream(folder / s.file, list(s.tensors), counted),
                                          folder)
    except TrtkitError as exc:
        error = exc
    gathered = comm.allgather((mine, error))
    errors = [e for _, e in gathered if e is not None]
    if errors:
        raise errors[0]
    hashes: dict[str, str] = {}
    for part, _ in gathered:
        hashes.update(part)
    return hashes


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def guard_disk(fn: Callable[[], str], folder: Path) -> str:
    try:
        return fn()
    except OSError as exc:
        if is_disk_full(exc):
            free = shutil.disk_usage(folder).free
            raise OutputError(f"{folder}: out of disk space while writing ({free / 1e9:.2f} GB free); "
                              "free space or choose an OUT on a larger filesystem") from exc
        raise


def check_creatable(out: Path) -> Path:
    """OUT (a folder or file not yet written) can be created: the nearest existing folder above it is a
    directory that accepts new entries. Returns that folder. The test is a real one (a temporary folder,
    removed at once): permission bits say nothing for root, read-only mounts or /proc."""
    out = Path(out)
    base = Path(os.path.abspath(out)).parent
    while not base.exists():  # OUT's parents are created later
        base = base.parent
    if not base.is_dir():
        raise OutputError(f"cannot create OUT {out}: {base} is a file, not a directory; choose another OUT")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".trtkit-probe-", dir=base))
    except OSError as exc:
        raise OutputError(f"cannot create OUT {out}: {base} does not accept new files ({exc.strerror}); "
                          "choose another OUT") from exc
    return base


def check_free_space(out: Path, need_bytes: int) -> None:
    parent = check_creatable(out)  # measure where OUT will live, once it is known OUT can live there
    free = shutil.disk_usage(parent).free
    if free < need_bytes:
        raise OutputError(f"{out}: out of disk space: the output needs {need_bytes / 1e9:.2f} GB, "
                          f"{parent} has {free / 1e9:.2f} GB free; free space or choose another OUT")


def check_apart(src: Path, out: Path) -> None:
    """OUT must neither be SRC, lie inside it, nor hold it: replacing OUT (--force) would delete the source."""
    s, o = Path(src).resolve(), Path(out).resolve()
    if o == s or s in o.parents:
        raise OutputError(f"OUT {out} is inside SRC {src}; choose an output folder outside the source")
    if o in s.parents:
        raise OutputError(f"OUT {out} contains SRC {src}: replacing OUT would delete the source; choose an "
                          "output folder outside the source's parents")


NO_LOCKING = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)  # flock unsupported here


def _lock_output(lock: Path, out: Path) -> int:
    """An exclusive lock on `lock` (`.OUT.lock` beside OUT), held by rank 0 for the whole write (released
    when the process ends, however it ends): a second run to the same OUT fails at once instead of deleting
    and sharing the first one's `.OUT.partial`. Returns the lock's descriptor for `_unlock_output`."""
    for _ in range(5):  # a run finishing meanwhile may remove the file we opened: open the new one
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"{out}: another trtkit run is writing it (it holds {lock}); wait for that run "
                              "to finish or choose another OUT") from None
        except OSError as exc:
            if exc.errno not in NO_LOCKING:
                os.close(fd)
                raise
            return fd  # a filesystem without locks (NFS without lockd, Lustre noflock): unguarded, as before
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OutputError(f"{out}: its lock {lock} keeps being replaced by other runs; wait for them to finish")


def _unlock_output(lock: Path, fd: int) -> None:
    """Remove the lock file while still holding it, then release it."""
    with suppress(FileNotFoundError):
        os.unlink(lock)
    os.close(fd)


def _check_out(out: Path, force: bool) -> None:
    """OUT is absent, an empty folder, or (with force) a folder to replace."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory; remove it or choose another OUT")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputError(f"{out}: exists and is not empty; pass --force to replace it")


@contextmanager
def atomic_output(out: Path, force: bool, comm: Comm) -> Iterator[Path]:
    """Yield a fresh hidden folder beside `out`; rename it to `out` only if the block succeeds. Rank 0 holds
    `.OUT.lock` meanwhile (one run per OUT at a time). Commands that read a SRC folder call
    `check_apart(src, out)` first."""
    out = Path(out)
    _check_out(out, force)
    check_creatable(out)
    tmp, old, lock = (out.parent / f".{out.name}.{suffix}" for suffix in ("partial", "old", "lock"))
    error, held = None, None
    if comm.rank == 0:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            held = _lock_output(lock, out)
            _check_out(out, force)  # again, locked: a run that finished since the check above made OUT
            for stale in (tmp, old):  # left by a killed run: a folder, or anything else by that name
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
                elif stale.exists() or stale.is_symlink():
                    stale.unlink()
            tmp.mkdir()
        except OutputError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"cannot create OUT {out}: {exc.strerror} ({exc.filename}); choose another OUT"
    error = comm.bcast(error)  # every rank learns of rank 0's failure (a barrier would leave them waiting)
    if error:
        if held is not None:
            _unlock_output(lock, held)
        raise OutputError(error)
    try:
        try:
            yield tmp
        except BaseException:
            if comm.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        comm.barrier()
        if comm.rank == 0:
            if out.exists() or out.is_symlink():  # a symlink OUT (even dangling) is replaced, not followed
                out.rename(old)
            tmp.rename(out)
            if old.is_symlink():  # the replaced link itself: unlink it, never its target's contents
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if held is not None:
            _unlock_output(lock, held)
    comm.barrier()
