"""The checkpoint manifest: what was converted from what, with a sha256 for every file.

No time stamps: converting the same source twice (or with any number of MPI ranks) gives the same
manifest byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from builder.errors import CheckpointError
from builder.layout import ExpertFormat
from builder.quant_config import NVFP4_GROUP_SIZE, Scope
from builder.safetensors_io import sha256_file
from builder.source_digest import METHOD as SOURCE_METHOD
from plugins.formats.cast import CastStats

MANIFEST_NAME = "trtkit_manifest.json"
MANIFEST_FORMAT = "trtkit.nvfp4-checkpoint/1"


def trtkit_version() -> str:
    try:
        return version("trtkit")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def hash_files(paths: list[Path], root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in paths}


def listing_checksum(hashes: dict[str, str]) -> str:
    """One sha256 for a folder: over the sorted `name sha256` lines of its files."""
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def build_manifest(out: Path, *, src: Path, expert_format: ExpertFormat, scope: Scope,
                   source: tuple[str, dict[str, str]], shard_hashes: dict[str, str],
                   stats: dict[str, CastStats], skipped: list[str],
                   input_scales: dict[str, float] | None, calibration: dict | None) -> dict:
    hashes = dict(shard_hashes)
    hashes.update(hash_files([p for p in sorted(out.iterdir())
                              if p.is_file() and p.name not in hashes and p.name != MANIFEST_NAME], out))
    totals = {"exact": sum(s.exact_blocks for s in stats.values()),
              "fallback": sum(s.fallback_blocks for s in stats.values()),
              "zero_scale": sum(s.zero_scale_blocks for s in stats.values())}
    weights_only = input_scales is None
    return {
        "format": MANIFEST_FORMAT,
        "trtkit_version": trtkit_version(),
        "source": {"path": str(src.resolve()), "expert_format": expert_format.value,
                   "checksum": source[0], "checksum_method": SOURCE_METHOD, "files": source[1],
                   "not_copied": skipped},
        "quantization": {
            "quant_algo": "NVFP4", "group_size": NVFP4_GROUP_SIZE, "scope": scope.name,
            "scope_description": scope.description,
            "weights_only": weights_only,
            "activation_scales": ("absent: TensorRT-LLM needs input_scale for NVFP4; calibrate with "
                                  "`trtkit convert --calibrate` before serving" if weights_only
                                  else "calibrated"),
            "calibration": calibration,
        },
        "cast": {
            "method": ("closed-form MXFP4 -> NVFP4 (exact in-range blocks, data-derived fallback)"
                       if expert_format is ExpertFormat.MXFP4 else "NVFP4 quantization of BF16 experts"),
            "mxfp4_blocks": totals if expert_format is ExpertFormat.MXFP4 else None,
            "per_tensor": {name: {"exact": s.exact_blocks, "fallback": s.fallback_blocks,
                                  "zero_scale": s.zero_scale_blocks, "k_max": s.k_max,
                                  "modelopt_lossless": s.modelopt_lossless_blocks}
                           for name, s in stats.items()},
        },
        "files": {name: hashes[name] for name in sorted(hashes)},
    }


def write_manifest(out: Path, manifest: dict) -> None:
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


MANIFEST_FIX = "restore it from the converted checkpoint, or rerun trtkit convert"


def manifest_files(path: Path, error: type[Exception] = CheckpointError) -> dict[str, str]:
    """A trtkit_manifest.json's {file: sha256} listing, checked; `error` naming the file when it is not one."""
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise error(f"{path}: not a readable JSON manifest ({e}); {MANIFEST_FIX}") from None
    files = manifest.get("files", {}) if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise error(f"{path}: 'files' must map file names to sha256 strings; {MANIFEST_FIX}")
    return files


def verify_manifest(folder: Path) -> list[str]:
    """Re-hash every file the manifest lists; return the problems (empty when intact)."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; this folder was not written by trtkit convert")
    files = manifest_files(path)
    problems = []
    for name, digest in files.items():
        p = folder / name
        if not p.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{name}: sha256 differs from the manifest")
    extra = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in files
                   and p.name != MANIFEST_NAME)
    problems += [f"{name}: not listed in the manifest" for name in extra]
    return problems
