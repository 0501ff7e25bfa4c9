"""Reading a gpt-oss checkpoint folder lazily, with strict accounting of every tensor.

The folder states its own format: `config.json`'s `quantization_config.quant_method` (`mxfp4` for the
release, `modelopt` for NVFP4, absent for BF16); the tensor tables of `builder.layout` then say what
must be there, and anything missing, unexpected, or of the wrong dtype/shape is reported in full.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from builder.errors import CheckpointError
from builder.layout import ExpertFormat, TensorSpec, checkpoint_tensors
from builder.safetensors_io import ShardHeader, check_finite, read_header
from builder.source_digest import TensorDigests
from builder.spec import ModelSpec, read_config

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
QUANT_METHODS = {None: ExpertFormat.BF16, "mxfp4": ExpertFormat.MXFP4, "modelopt": ExpertFormat.NVFP4}
# Tensors (by name suffix) whose every value must be > 0 when read, and what they are.
POSITIVE_TENSORS = {"_input_scale": "an NVFP4 activation input_scale (the activations are divided by it)"}


@dataclass
class Checkpoint:
    """A validated checkpoint folder. Tensors load lazily, one at a time (or one slice at a time)."""

    folder: Path
    spec: ModelSpec
    config: dict[str, Any]
    expert_format: ExpertFormat
    weight_map: dict[str, str]  # tensor name -> shard file name (relative to folder)
    headers: dict[str, ShardHeader]
    _handles: dict[str, Any] = field(default_factory=dict, repr=False)
    digests: TensorDigests | None = field(default=None, repr=False)  # hash rows as they are read

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path, *, strict: bool = True) -> Checkpoint:
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a directory; pass a Hugging Face checkpoint folder")
        config = read_config(folder)
        spec = ModelSpec.from_config(config, source=str(folder / "config.json"))
        fmt = expert_format_of(config, folder)
        weight_map = _read_weight_map(folder)
        headers = {f: read_header(folder / f) for f in sorted(set(weight_map.values()))}
        for tensor, shard in weight_map.items():
            if tensor not in headers[shard].tensors:
                raise CheckpointError(f"{folder / INDEX_NAME}: maps tensor {tensor} to {shard}, "
                                      f"which does not contain it; regenerate the index")
        ckpt = cls(folder, spec, config, fmt, weight_map, headers)
        if strict:
            ckpt.check_layout()
        return ckpt

    # ---- accounting -----------------------------------------------------------------------
    def meta(self, name: str) -> TensorSpec:
        return self.headers[self.weight_map[name]].tensors[name]

    def expected(self) -> list[TensorSpec]:
        with_input = any(n.endswith("_input_scale") for n in self.weight_map)
        return checkpoint_tensors(self.spec, self.expert_format, with_input_scale=with_input)

    def check_layout(self) -> None:
        """Every expected tensor present with the right dtype and shape, nothing else."""
        expected = {t.name: t for t in self.expected()}
        missing = sorted(set(expected) - set(self.weight_map))
        unexpected = sorted(set(self.weight_map) - set(expected))
        fmt = f"{self.expert_format.value} gpt-oss checkpoint"
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected)}")
            raise CheckpointError(f"{self.folder}: not a complete {fmt} for its config.json: "
                                  f"{'; '.join(parts)}")
        wrong = []
        for name, want in expected.items():
            got = self.meta(name)
            if got.dtype != want.dtype or got.shape != want.shape:
                wrong.append(f"{name} is {_fmt(got)} in {self.weight_map[name]}, expected {_fmt(want)}")
        if wrong:
            raise CheckpointError(f"{self.folder}: {len(wrong)} tensor(s) of the wrong dtype/shape for "
                                  f"a {fmt}: {'; '.join(wrong)}")

    # ---- lazy loading ---------------------------------------------------------------------
    # Reads go through pread into private buffers (no mmap): the bytes of a tensor are resident only
    # while the caller holds it, so peak memory stays at the working set, whatever the model size.
    def _fd(self, shard: str) -> int:
        if shard not in self._handles:
            self._handles[shard] = os.open(self.folder / shard, os.O_RDONLY)
        return self._handles[shard]

    def _read(self, name: str, start: int, stop: int | None) -> torch.Tensor:
        shard = self.weight_map[name]
        header, spec = self.headers[shard], self.meta(name)
        rows = spec.shape[0] if spec.shape else 1
        stop = rows if stop is None else min(stop, rows)
        row_bytes = spec.nbytes // rows if rows else 0
        offset = header.data_start + header.offsets[name] + start * row_bytes
        flat = torch.empty((stop - start) * row_bytes, dtype=torch.uint8)  # no zero-fill, unlike bytearray
        view, done = memoryview(flat.numpy()), 0
        while done < len(view):
            n = os.preadv(self._fd(shard), [view[done:]], offset + done)
            if n <= 0:
                raise CheckpointError(f"{self.folder / shard}: truncated while reading tensor {name}; "
                                      "re-download or re-copy this shard")
            done += n
        if self.digests is not None:
            self.digests.observe(name, rows, start, stop, flat)
        shape = (stop - start, *spec.shape[1:]) if spec.shape else ()
        return flat.view(spec.dtype).reshape(shape)

    def load(self, name: str, *, check: bool = True) -> torch.Tensor:
        """Load one whole tensor; floating tensors are checked for NaN/Inf, scales for their range."""
        t = self._read(name, 0, None)
        if check:
            self._check(name, t)
        return t

    def load_rows(self, name: str, start: int, stop: int, *, check: bool = True) -> torch.Tensor:
        """Load `tensor[start:stop]` along the leading axis without reading the rest."""
        t = self._read(name, start, stop)
        if check:
            self._check(name, t)
        return t

    def _check(self, name: str, t: torch.Tensor) -> None:
        where = self.folder / self.weight_map[name]
        check_finite(name, t, where)
        for suffix, why in POSITIVE_TENSORS.items():
            if name.endswith(suffix) and t.numel() and not bool((t > 0).all()):
                raise CheckpointError(f"{where}: tensor {name} holds {float(t.min()):g}; {why} must be > 0 "
                                      "(recalibrate with `trtkit convert --calibrate`, or restore the file)")

    def close(self) -> None:
        for fd in self._handles.values():
            os.close(fd)
        self._handles.clear()


def expert_format_of(config: dict[str, Any], folder: Path) -> ExpertFormat:
    """The format the checkpoint states: `quantization_config.quant_method` or hf_quant_config.json."""
    qc = config.get("quantization_config") or {}
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    if method is None and (folder / "hf_quant_config.json").is_file():
        method = "modelopt"
    if method not in QUANT_METHODS:
        known = ", ".join(repr(k) for k in QUANT_METHODS if k)
        raise CheckpointError(f"{folder / 'config.json'}: quantization_config.quant_method={method!r} is not "
                              f"supported; expected one of {known} or no quantization_config (BF16)")
    return QUANT_METHODS[method]


def _read_weight_map(folder: Path) -> dict[str, str]:
    index = folder / INDEX_NAME
    if not index.is_file():
        single = folder / SINGLE_NAME
        if not single.is_file():
            raise CheckpointError(f"{folder}: neither {INDEX_NAME} nor {SINGLE_NAME} found; "
                                  "a checkpoint needs its safetensors weights")
        return {name: SINGLE_NAME for name in read_header(single).tensors}
    try:
        data = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{index}: not valid JSON ({exc}); regenerate the index") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        found = "no \"weight_map\"" if weight_map is None else f"\"weight_map\" {json.dumps(weight_map)[:40]}"
        raise CheckpointError(f"{index}: not a valid safetensors index ({found}; expected a \"weight_map\" "
                              "object of tensor name -> shard file name); regenerate it")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index}: tensor {tensor} maps to {json.dumps(shard)}, not a shard file "
                                  "name; regenerate the index")
        rel = Path(shard)
        target = folder / rel  # symlinks are allowed (Hugging Face cache snapshots point into blobs/)
        if rel.is_absolute() or ".." in rel.parts or len(rel.parts) != 1:
            raise CheckpointError(f"{index}: tensor {tensor} points outside the checkpoint folder "
                                  f"({shard!r}); shard paths must be plain file names")
        if not target.is_file():
            raise CheckpointError(f"{index}: tensor {tensor} is in shard {shard}, which does not exist; "
                                  "copy the missing shard or regenerate the index")
    return dict(weight_map)


def _fmt(t: TensorSpec) -> str:
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
