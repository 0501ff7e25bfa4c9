"""Inputs and outputs of `trtkit forward`: token ids from JSON, logits to safetensors (atomically)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from builder.errors import OutputError, TrtkitError
from builder.writer import check_creatable

LOGITS_KEY = "logits"


class InputError(TrtkitError):
    """The token-id input is malformed (not JSON, empty, ragged, or ids outside the vocabulary)."""


def parse_input_ids(data: object, vocab_size: int, source: str = "input") -> torch.Tensor:
    """A JSON value holding a non-empty list of equal-length, non-empty lists of ids in
    [0, vocab_size) -> int64 [B, T]."""
    fix = "expected a JSON list of equal-length lists of token ids, e.g. [[1, 2, 3], [4, 5, 6]]"
    if not isinstance(data, list) or not data:
        raise InputError(f"{source}: empty or not a list; {fix}")
    for b, row in enumerate(data):
        if not isinstance(row, list) or not row:
            raise InputError(f"{source}: row {b} is empty or not a list; {fix}")
        if len(row) != len(data[0]):
            raise InputError(f"{source}: ragged input: row {b} has {len(row)} ids, row 0 has "
                             f"{len(data[0])}; all rows must have the same length (pad them)")
        for t, tok in enumerate(row):
            if isinstance(tok, bool) or not isinstance(tok, int):
                raise InputError(f"{source}: id at [{b}][{t}] is {tok!r}, not an integer; {fix}")
            if not 0 <= tok < vocab_size:
                raise InputError(f"{source}: id {tok} at [{b}][{t}] is outside the vocabulary "
                                 f"(vocab_size {vocab_size}: ids must be 0..{vocab_size - 1})")
    return torch.tensor(data, dtype=torch.int64)


def load_input_ids(path: str | Path, vocab_size: int) -> torch.Tensor:
    """Read and validate IDS.json -> int64 [B, T]."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{path}: not found; pass a JSON file of token ids") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read token ids ({exc}); write a JSON list of lists of "
                         "integers") from exc
    return parse_input_ids(data, vocab_size, str(path))


def check_logits_path(path: str | Path) -> None:
    """`path` can take the logits file: not a folder, in an existing folder that accepts new files.
    Called before the forward runs, so a bad --out costs nothing."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; pass a file name for the logits, e.g. {path / 'logits.safetensors'}")
    if not path.parent.exists():
        raise OutputError(f"{path}: folder {path.parent} does not exist; create it first")
    check_creatable(path)


def save_logits(path: str | Path, logits: torch.Tensor) -> None:
    """Write {"logits": float32 [B, T, V]} to `path` via a temporary file in the same folder."""
    path = Path(path)
    check_logits_path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot create {path}: {exc.strerror}; choose another --out") from exc
    os.close(fd)
    try:
        save_file({LOGITS_KEY: logits.float().contiguous()}, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write logits ({exc.strerror}); check space and permissions"
                          ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
