"""The source checksum, computed from the bytes the converter reads anyway (no second pass).

Every byte of the source folder is covered: each safetensors file as its header bytes plus each of
its tensors' data, every other top-level file whole. The checksum is the sha256 of the sorted lines

    file <name> <sha256>            (config, index, tokenizer, ... : whole files)
    header <shard> <sha256>         (the 8-byte length and the JSON header of a shard)
    tensor <name> <sha256>          (a tensor's data bytes, in row order)

so any changed byte changes it. `TensorDigests` hashes tensor bytes on a background thread as the
converter reads rows in order; `source_checksum(folder)` computes the same value from scratch.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path
from typing import Any

import torch

from builder.safetensors_io import read_header, sha256_file

METHOD = "trtkit.source-digest/1: sha256 over sorted 'file|header|tensor <name> <sha256>' lines"
QUEUE_CHUNKS = 8


class TensorDigests:
    """Per-tensor sha256 of rows read in order (re-reads and out-of-order reads are ignored)."""

    def __init__(self) -> None:
        self._hashers: dict[str, Any] = {}
        self._next_row: dict[str, int] = {}
        self._rows: dict[str, int] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            name, chunk = item
            self._hashers[name].update(memoryview(chunk.numpy()))

    def observe(self, name: str, rows: int, start: int, stop: int, raw: torch.Tensor) -> None:
        """`raw`: the uint8 bytes of rows [start, stop) of tensor `name` (which has `rows` rows)."""
        if name not in self._hashers:
            if start != 0:
                return
            self._hashers[name], self._next_row[name], self._rows[name] = hashlib.sha256(), 0, rows
        if start != self._next_row[name]:
            return
        self._next_row[name] = stop
        self._queue.put((name, raw))

    def finish(self) -> dict[str, str]:
        """Digests of the tensors read completely."""
        self._queue.put(None)
        self._thread.join()
        return {n: h.hexdigest() for n, h in self._hashers.items() if self._next_row[n] == self._rows[n]}


def tensor_sha256(path: Path, begin: int, nbytes: int, bufsize: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(begin)
        left = nbytes
        while left:
            block = f.read(min(bufsize, left))
            if not block:
                raise OSError(f"{path}: truncated")
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def header_sha256(path: Path) -> str:
    h = read_header(path)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(h.data_start)).hexdigest()


def combine(files: dict[str, str], headers: dict[str, str], tensors: dict[str, str]) -> str:
    lines = sorted([f"file {n} {d}" for n, d in files.items()] + [f"header {n} {d}" for n, d in headers.items()]
                   + [f"tensor {n} {d}" for n, d in tensors.items()])
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()


def finish_checksum(folder: Path, read: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The checksum of `folder`, reusing the tensor digests the converter computed while reading
    (`read`); tensors it never read whole are hashed here, headers and other files are small.
    Returns (checksum, {file: sha256} of the non-weight files)."""
    folder = Path(folder)
    files, headers, tensors = {}, {}, dict(read)
    for p in sorted(q for q in folder.iterdir() if q.is_file()):
        if not p.name.endswith(".safetensors"):
            files[p.name] = sha256_file(p)
            continue
        h = read_header(p)
        headers[p.name] = header_sha256(p)
        for name, spec in h.tensors.items():
            if name not in tensors:
                tensors[name] = tensor_sha256(p, h.data_start + h.offsets[name], spec.nbytes)
    return combine(files, headers, tensors), files


def source_checksum(folder: Path) -> str:
    """The same checksum from scratch, one sequential read of every file (to check a manifest)."""
    return finish_checksum(folder, {})[0]
