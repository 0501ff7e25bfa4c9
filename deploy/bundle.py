"""The engine bundle: a verified NVFP4 checkpoint + recipes + verification report + manifest.

    OUT/
      checkpoint/            NVFP4 (W4A4, calibrated) in Model Optimizer's unified layout
      recipes/<gpu>/<profile>/   TensorRT-LLM options YAML, serve.sh, Slurm, Kubernetes, Dynamo, recipe.yaml
      recipes/<gpu>/<profile>-nvfp4/   Hopper only: this NVFP4 checkpoint through the trtkit::moe plugin
      verification.json      machine-readable report (exact weights/logits + W4A4-emulated logits)
      VERIFICATION.md        the same, for people
      README.md              for operators: what is inside, how to launch, predicted figures per GPU
      manifest.json          sha256 of every file, source checksum, versions, creation time

Hopper cannot run NVFP4 W4A4: its recipes point at the MXFP4 source checkpoint, recorded by path and
checksum (or copied into `source/` with `include_source`), and its `-nvfp4` recipes serve this bundle's
checkpoint with weight-only NVFP4 experts on trtkit::moe (one checkpoint for a mixed fleet).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import TrtkitError
from builder.manifest import MANIFEST_NAME as CKPT_MANIFEST
from builder.manifest import trtkit_version
from builder.safetensors_io import sha256_file

BUNDLE_MANIFEST = "manifest.json"
BUNDLE_FORMAT = "trtkit.bundle/1"
TRTLLM_TARGET = "1.2"  # the TensorRT-LLM release line whose option keys the recipes use
VERIFICATION_REPORT = "verification.json"
WEIGHT_SUFFIXES = (".safetensors",)  # launch checks these by size (hashing them is `bundle check`'s job)
DEPENDENCIES = ("torch", "safetensors", "transformers", "nvidia-modelopt", "tensorrt_llm", "triton")


class BundleError(TrtkitError):
    """A bundle is incomplete, tampered with, or failed verification."""


@dataclass(frozen=True)
class VerifyPolicy:
    """Gates of `trtkit build`. The weights-only check compares the NVFP4 checkpoint with its source
    in float32 (an exact MXFP4 cast gives KL 0 and top-1 1.0); the W4A4 check emulates Blackwell's
    4-bit activations and is reported honestly, gated only on a loose KL."""

    max_kl: float = 1e-6
    min_top1: float = 1.0
    w4a4_max_kl: float = 0.05
    num_tokens: int = 256


def dependency_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in DEPENDENCIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def bundle_files(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` except the bundle manifest."""
    return {name: sha256_file(p) for name, p in _on_disk(folder).items()}


def bundle_sizes(folder: Path) -> dict[str, int]:
    """{relative path: bytes}: lets `trtkit launch` check the weights without hashing them."""
    return {name: p.stat().st_size for name, p in _on_disk(folder).items()}


def _on_disk(folder: Path) -> dict[str, Path]:
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() != BUNDLE_MANIFEST}


def is_weight(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES)


SHA256 = re.compile(r"[0-9a-f]{64}")


def _shape(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return f"a bundle manifest is a JSON object, this is {type(doc).__name__}"
    if doc.get("format") != BUNDLE_FORMAT:
        return f"format {doc.get('format')!r} is not {BUNDLE_FORMAT!r} (a bundle of another trtkit, or not a bundle)"
    return None


def _files(doc: dict) -> str | None:
    files = doc.get("files")
    if not isinstance(files, dict) or not files:
        return f'"files" must map each file to its sha256, got {type(files).__name__}'
    bad = next((k for k, v in files.items() if not isinstance(v, str) or not SHA256.fullmatch(v)), None)
    return f'"files"[{bad!r}] is not a sha256 (64 hex digits)' if bad is not None else None


def _sizes(doc: dict) -> str | None:
    sizes = doc.get("sizes", {})  # absent in bundles built before sizes were recorded
    if not isinstance(sizes, dict) or any(type(v) is not int or v < 0 for v in sizes.values()):
        return '"sizes" must map files to their byte counts'
    return None


def _verification(doc: dict) -> str | None:
    if not isinstance(doc.get("verification"), dict) or not isinstance(doc["verification"].get("passed"), bool):
        return '"verification" must be {"passed": true|false, "report": ...}'
    return None


def _source(doc: dict) -> str | None:
    src = doc.get("source")
    if (not isinstance(src, dict) or not isinstance(src.get("path"), str)
            or not isinstance(src.get("copied_to"), (str, type(None)))):
        return '"source" must be {"path": ..., "checksum": ..., "copied_to": null or a folder in the bundle}'
    return None


MANIFEST_RULES: tuple[Callable[[Any], str | None], ...] = (_shape, _files, _sizes, _verification, _source)


def read_manifest(folder: Path) -> dict:
    """The bundle's manifest.json, checked to be ours and well formed; BundleError (one line) otherwise."""
    path = Path(folder) / BUNDLE_MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: not found; {folder} is not a trtkit bundle (build one with trtkit build)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc}); rebuild the bundle with trtkit build") from exc
    for rule in MANIFEST_RULES:
        if why := rule(doc):
            raise BundleError(f"{path}: {why}; rebuild the bundle with trtkit build")
    return doc


def check_bundle(folder: Path, verify_weights: bool = True) -> list[str]:
    """Every problem with a bundle (empty when intact): failed verification, missing, changed or unlisted
    files. verify_weights=False (trtkit launch) compares the weight shards' sizes instead of hashing them:
    hashing tens of GB takes minutes on every launch. Raises BundleError when the manifest is not ours."""
    return _problems(Path(folder), read_manifest(folder), verify_weights)


def _problems(folder: Path, manifest: dict, verify_weights: bool) -> list[str]:
    listed, sizes = manifest["files"], manifest.get("sizes", {})
    actual = _on_disk(folder)
    problems = [f"{name}: missing" for name in sorted(set(listed) - set(actual))]
    for name in sorted(set(listed) & set(actual)):
        if verify_weights or not is_weight(name) or name not in sizes:  # older manifests record no sizes
            if sha256_file(actual[name]) != listed[name]:
                problems.append(f"{name}: sha256 differs from the manifest")
        elif actual[name].stat().st_size != sizes[name]:
            problems.append(f"{name}: {actual[name].stat().st_size} bytes, the manifest says {sizes[name]}")
    problems += [f"{name}: not listed in the manifest" for name in sorted(set(actual) - set(listed))]
    return _failed_verification(folder, manifest) + problems


def require_intact(folder: Path, verify_weights: bool = False) -> dict:
    """`trtkit launch`'s gate: the bundle's manifest is ours, its verification passed and every file matches
    (weights by size unless verify_weights); its manifest, or one BundleError line with the problems."""
    manifest = read_manifest(folder)
    problems = _problems(Path(folder), manifest, verify_weights)
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise BundleError(f"{folder}: not launching a bundle that does not match its manifest: "
                          f"{'; '.join(problems[:3])}{more} (trtkit bundle check {folder} lists them; rebuild it)")
    return manifest


def _failed_verification(folder: Path, manifest: dict) -> list[str]:
    if not manifest["verification"]["passed"]:
        return [f"{BUNDLE_MANIFEST}: verification.passed is false: the checkpoint does not reproduce its "
                "source; do not serve it, rebuild the bundle"]
    try:
        report = json.loads((folder / VERIFICATION_REPORT).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return [f"{VERIFICATION_REPORT}: unreadable; rebuild the bundle"]
    if not isinstance(report, dict) or report.get("passed") is not True:
        return [f"{VERIFICATION_REPORT}: does not say passed; do not serve this bundle, rebuild it"]
    return []


def write_verification(out: Path, exact: dict, w4a4: dict, policy: VerifyPolicy) -> bool:
    passed = exact["passed"] and w4a4["passed"]
    report = {"passed": passed, "policy": policy.__dict__, "weights_only": exact, "w4a4_emulated": w4a4}
    (out / VERIFICATION_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Verification", "",
        f"Result: **{'PASSED' if passed else 'FAILED'}**", "",
        "| check | KL mean | KL max | top-1 | max abs dlogit | exact expert tensors | gate | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r, gate in (("NVFP4 weights vs source (float32)", exact,
                           f"KL <= {policy.max_kl:g}, top-1 >= {policy.min_top1:g}"),
                          ("W4A4 emulated (Blackwell activations)", w4a4, f"KL <= {policy.w4a4_max_kl:g}")):
        lines.append(f"| {name} | {r['kl_mean']:.3g} | {r['kl_max']:.3g} | {r['top1_agreement']:.4f} | "
                     f"{r['max_abs_logit_diff']:.3g} | {len(r['exact_tensors'])}/"
                     f"{len(r['exact_tensors']) + len(r['inexact_tensors'])} | {gate} | "
                     f"{'pass' if r['passed'] else 'FAIL'} |")
    lines += ["", f"Tokens: {exact['positions']} positions (deterministic ids, seed 0).", ""]
    (out / "VERIFICATION.md").write_text("\n".join(lines))
    return passed


def run_verification(src: Path, ckpt: Path, policy: VerifyPolicy, log: Callable[[str], None]
                     ) -> tuple[dict, dict]:
    from builder.verify import Thresholds, verify_modes

    reports = verify_modes(src, ckpt, {False: Thresholds(max_kl=policy.max_kl, min_top1=policy.min_top1),
                                       True: Thresholds(max_kl=policy.w4a4_max_kl, min_top1=0.0)},
                           num_tokens=policy.num_tokens, log=log)
    return reports[False].to_json(), reports[True].to_json()


def write_manifest(out: Path, *, src: Path, source_checksum: str, include_source: bool, extra: dict) -> dict:
    manifest = {
        "format": BUNDLE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "trtkit_version": trtkit_version(),
        "dependencies": dependency_versions(),
        "tensorrt_llm_target": TRTLLM_TARGET,
        "source": {"path": str(src.resolve()), "checksum": source_checksum,
                   "copied_to": "source/" if include_source else None},
        **extra,
        "files": bundle_files(out),
        "sizes": bundle_sizes(out),
    }
    (out / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def copy_source(src: Path, dest: Path) -> None:
    dest.mkdir()
    for p in sorted(src.iterdir()):
        if p.is_file():
            shutil.copyfile(p, dest / p.name)


def source_checksum_of(ckpt_dir: Path) -> str:
    manifest = json.loads((ckpt_dir / CKPT_MANIFEST).read_text())
    return manifest["source"]["checksum"]
