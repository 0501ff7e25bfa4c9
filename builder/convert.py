"""gpt-oss (MXFP4 release or BF16) -> NVFP4 checkpoint in Model Optimizer's unified layout.

Streaming: tensors are read lazily and written one expert (or ~64 MiB of rows) at a time, so peak
memory does not grow with the model. `mpiexec -n N` deals shards to ranks; the bytes are identical
for any N. Output is all-or-nothing (see `builder.writer.atomic_output`).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from builder.checkpoint import Checkpoint
from builder.errors import CheckpointError
from builder.experts import ExpertCaster
from builder.layout import ExpertFormat, TensorSpec, checkpoint_tensors, experts_prefix, layer_of, projections
from builder.manifest import build_manifest, write_manifest
from builder.parallel import Comm, SerialComm
from builder.quant_config import SCOPES, hf_quant_config, inline_quantization_config
from builder.source_digest import TensorDigests, finish_checksum
from builder.spec import with_legacy_rope
from builder.writer import (
    DEFAULT_MAX_SHARD_BYTES,
    INDEX_NAME,
    atomic_output,
    check_apart,
    check_free_space,
    index_json,
    plan_shards,
    write_json,
    write_shards,
)
from plugins.formats.cast import CastStats

ROW_CHUNK_BYTES = 16 << 20
# Top-level source files we regenerate or never copy; every other regular file is copied verbatim.
REGENERATED = {"config.json", INDEX_NAME, "hf_quant_config.json", "trtkit_manifest.json"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")


@dataclass(frozen=True)
class ConvertResult:
    out: Path
    stats: CastStats | None
    manifest: dict


# NVFP4 expert tensors and the ExpertCaster method that produces each, by name suffix.
EXPERT_OUTPUTS = (("", "weight"), ("_weight_scale", "weight_scale"), ("_weight_scale_2", "weight_scale_2"))


class _Producer:
    """Produces every target tensor from the source on demand, keeping one projection's state."""

    def __init__(self, ckpt: Checkpoint, input_scales: dict[str, float] | None):
        self.ckpt = ckpt
        self.input_scales = input_scales or {}
        self.casters: dict[str, ExpertCaster] = {}
        self.stats: dict[str, CastStats] = {}
        self._projection = {f"{experts_prefix(i)}.{p.name}": p
                            for i in range(ckpt.spec.num_hidden_layers) for p in projections(ckpt.spec)}
        self._routes = {base + suffix: (base, method) for base in self._projection
                        for suffix, method in EXPERT_OUTPUTS}  # target name -> (projection, method)

    def _caster(self, base: str) -> ExpertCaster:
        if base not in self.casters:
            # hold at most one layer's projections: drop casters of other layers
            layer = layer_of(base)
            self.casters = {b: c for b, c in self.casters.items() if layer_of(b) == layer}
            self.casters[base] = ExpertCaster(self.ckpt, base, self._projection[base])
        return self.casters[base]

    def __call__(self, t: TensorSpec) -> Iterator[torch.Tensor]:
        if t.name in self._routes:
            base, method = self._routes[t.name]
            caster = self._caster(base)
            yield from getattr(caster, method)()
            if method == "weight" and caster.stats is not None:
                self.stats[base] = caster.stats
        elif t.name.endswith("_input_scale"):
            yield torch.tensor(self.input_scales[t.name], dtype=torch.float32)
        else:
            yield from self._copy(t)

    def _copy(self, t: TensorSpec) -> Iterator[torch.Tensor]:
        """A BF16 tensor, verbatim, in row chunks (checked for NaN/Inf)."""
        rows = t.shape[0] if t.shape else 1
        step = max(1, ROW_CHUNK_BYTES // max(1, t.nbytes // rows))
        for start in range(0, rows, step):
            yield self.ckpt.load_rows(t.name, start, min(rows, start + step))


def output_config(ckpt: Checkpoint) -> dict:
    cfg = with_legacy_rope(dict(ckpt.config), ckpt.spec)
    cfg["quantization_config"] = inline_quantization_config(ckpt.spec)
    cfg.setdefault("torch_dtype", cfg.get("dtype", "bfloat16"))  # transformers 4.x / TensorRT-LLM key
    return cfg


def aux_files(folder: Path) -> tuple[list[Path], list[str]]:
    """(files to copy verbatim, names skipped) from the top level of a source folder."""
    copy, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.name in REGENERATED or p.name.startswith("."):
            continue
        if p.is_dir() or p.name.endswith(WEIGHT_SUFFIXES):
            if not p.name.endswith(".safetensors"):
                skipped.append(p.name + ("/" if p.is_dir() else ""))
            continue
        copy.append(p)
    return copy, skipped


def convert(src: Path, out: Path, *, scope: str = "experts", force: bool = False,
            input_scales: dict[str, float] | None = None, comm: Comm | None = None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
            progress: Callable[[int], None] | None = None, calibration: dict | None = None) -> ConvertResult:
    """Convert checkpoint folder `src` into NVFP4 folder `out` (all or nothing)."""
    comm = comm or SerialComm()
    src, out = Path(src), Path(out)
    if scope not in SCOPES:
        raise CheckpointError(f"--scope {scope!r} is unknown; choose one of {', '.join(SCOPES)}")
    check_apart(src, out)
    ckpt = Checkpoint.open(src)
    if ckpt.expert_format is ExpertFormat.NVFP4:
        raise CheckpointError(f"{src}: already an NVFP4 checkpoint; convert takes MXFP4 or BF16 gpt-oss")
    targets = checkpoint_tensors(ckpt.spec, ExpertFormat.NVFP4, with_input_scale=input_scales is not None)
    if input_scales is not None:
        missing = sorted(t.name for t in targets if t.name.endswith("_input_scale")
                         and t.name not in input_scales)
        if missing:
            raise CheckpointError(f"calibration gave no input_scale for {', '.join(missing)}")
        bad = {n: v for n, v in input_scales.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise CheckpointError(f"calibration gave input_scale {', '.join(f'{n}={v:g}' for n, v in bad.items())}; "
                                  "each must be finite and > 0 (0: no calibration activation reached that "
                                  "projection); calibrate on more or other data")
    shards = plan_shards(targets, max_shard_bytes)
    copy, skipped = aux_files(src)
    check_free_space(out, sum(s.nbytes for s in shards) + sum(p.stat().st_size for p in copy))

    with one_torch_thread(), atomic_output(out, force, comm) as tmp:
        # the source checksum hashes the rows as they are read: the source is read once
        ckpt.digests = TensorDigests()
        produce = _Producer(ckpt, input_scales)
        shard_hashes = write_shards(tmp, shards, produce, comm, progress)
        stats = _merge_stats(comm.allgather(produce.stats))
        read: dict[str, str] = {}
        for part in comm.allgather(ckpt.digests.finish()):
            read.update(part)
        ckpt.close()
        manifest = {}
        if comm.rank == 0:
            write_json(tmp / "config.json", output_config(ckpt))
            write_json(tmp / "hf_quant_config.json", hf_quant_config(ckpt.spec))
            write_json(tmp / INDEX_NAME, index_json(shards))
            for p in copy:
                shutil.copyfile(p, tmp / p.name)
            checksum, source_files = finish_checksum(src, read)
            manifest = build_manifest(tmp, src=src, expert_format=ckpt.expert_format, scope=SCOPES[scope],
                                      source=(checksum, source_files), shard_hashes=shard_hashes, stats=stats,
                                      skipped=skipped, input_scales=input_scales, calibration=calibration)
            write_manifest(tmp, manifest)
    total = None
    for s in stats.values():
        total = s if total is None else total + s
    return ConvertResult(out, total, comm.bcast(manifest))


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Conversion overlaps three streams (tensor work, writing + hashing the output, hashing the
    source rows as they are read); torch's intra-op threads would fight the other two for the cores,
    so it gets one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _merge_stats(parts: list[dict[str, CastStats]]) -> dict[str, CastStats]:
    merged: dict[str, CastStats] = {}
    for part in parts:
        merged.update(part)
    return dict(sorted(merged.items()))
