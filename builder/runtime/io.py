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


def check_input_ids(data: object, vocab_size: int, source: str = "input", *, equal_length: bool = True,
                    max_length: int | None = None) -> list[list[int]]:
    """A JSON value holding a non-empty list of non-empty lists of ids in [0, vocab_size), all of the
    same length when `equal_length`, none longer than `max_length` when given -> the rows."""
    rows = "equal-length lists" if equal_length else "lists"
    fix = f"expected a JSON list of {rows} of token ids, e.g. [[1, 2, 3], [4, 5, 6]]"
    if not isinstance(data, list) or not data:
        raise InputError(f"{source}: empty or not a list; {fix}")
    for b, row in enumerate(data):
        if not isinstance(row, list) or not row:
            raise InputError(f"{source}: row {b} is empty or not a list; {fix}")
        if equal_length and len(row) != len(data[0]):
            raise InputError(f"{source}: ragged input: row {b} has {len(row)} ids, row 0 has "
                             f"{len(data[0])}; all rows must have the same length (pad them)")
        if max_length is not None and len(row) > max_length:
            raise InputError(f"{source}: row {b} has {len(row)} ids, more than the model's "
                             f"max_position_embeddings {max_length}; split it into rows of at most "
                             f"{max_length} ids")
        for t, tok in enumerate(row):
            if isinstance(tok, bool) or not isinstance(tok, int):
                raise InputError(f"{source}: id at [{b}][{t}] is {tok!r}, not an integer; {fix}")
            if not 0 <= tok < vocab_size:
                raise InputError(f"{source}: id {tok} at [{b}][{t}] is outside the vocabulary "
                                 f"(vocab_size {vocab_size}: ids must be 0..{vocab_size - 1})")
    return data


def parse_input_ids(data: object, vocab_size: int, source: str = "input", *,
                    max_length: int | None = None) -> torch.Tensor:
    """A JSON value holding a non-empty list of equal-length, non-empty lists of ids in
    [0, vocab_size) -> int64 [B, T]."""
    return torch.tensor(check_input_ids(data, vocab_size, source, max_length=max_length), dtype=torch.int64)


def read_ids_json(path: str | Path) -> object:
    """The JSON value in token-id file `path`; InputError naming the file when it cannot be read."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{path}: not found; pass a JSON file of token ids") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read token ids ({exc}); write a JSON list of lists of "
                         "integers") from exc


def load_input_ids(path: str | Path, vocab_size: int, *, max_length: int | None = None) -> torch.Tensor:
    """Read and validate IDS.json -> int64 [B, T]."""
    return parse_input_ids(read_ids_json(path), vocab_size, str(path), max_length=max_length)


def load_id_rows(path: str | Path, vocab_size: int, *, max_length: int | None = None) -> list[list[int]]:
    """Read and validate IDS.json holding lists of ids of any lengths (calibration: one forward per
    list) -> the rows."""
    return check_input_ids(read_ids_json(path), vocab_size, str(path), equal_length=False,
                           max_length=max_length)


def check_logits_path(path: str | Path) -> None:
    """`path` can take the logits file: not a folder, in an existing folder that accepts new files.
    Called before the forward runs, so a bad --out costs nothing."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; pass a file name for the logits, e.g. {path / 'logits.safetensors'}")
    if not path.parent.exists():
        raise OutputError(f"{path}: folder {path.parent} does not exist; create it first")
    check_creatable(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the logits are an ordinary output file
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write logits ({exc.strerror}); check space and permissions"
                          ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
