"""Verification: does a candidate checkpoint compute what the reference computes?

Two kinds of evidence, both from code nobody can fool by construction:
  logits   both folders run through the reference runtime on the same tokens: per-position KL
           divergence KL(ref || cand), top-1 agreement, max |delta logit|;
  weights  every expert projection decoded from both folders to float32 and compared element for
           element ("exact" means equal as numbers; MXFP4's -0 reads as +0 after the cast).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from builder.checkpoint import Checkpoint
from builder.errors import TrtkitError
from builder.layout import ExpertFormat, experts_prefix, projections
from builder.spec import ModelSpec
from plugins.formats.mxfp4 import decode_mxfp4
from plugins.formats.nvfp4 import dequantize_nvfp4

DEFAULT_SEQ_LEN = 128
DEFAULT_SEED = 0


class VerificationError(TrtkitError):
    """The two checkpoints cannot be compared (different architectures, bad inputs)."""


@dataclass(frozen=True)
class Thresholds:
    max_kl: float = 1e-3      # on the mean KL over positions (nats)
    min_top1: float = 0.99    # fraction of positions whose argmax agrees


@dataclass(frozen=True)
class Report:
    kl_mean: float
    kl_max: float
    top1_agreement: float
    max_abs_logit_diff: float
    exact_tensors: list[str]
    inexact_tensors: list[str]
    positions: int
    passed: bool
    thresholds: Thresholds

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return (f"verification {verdict}: KL mean {self.kl_mean:.3g} (max {self.kl_max:.3g}, limit "
                f"{self.thresholds.max_kl:g}), top-1 agreement {self.top1_agreement:.4f} (min "
                f"{self.thresholds.min_top1:g}) over {self.positions} positions, max |dlogit| "
                f"{self.max_abs_logit_diff:.3g}; expert tensors: {len(self.exact_tensors)} exact, "
                f"{len(self.inexact_tensors)} inexact")


def check_same_architecture(ref: ModelSpec, cand: ModelSpec) -> None:
    diffs = [f"{f.name}: reference {getattr(ref, f.name)!r}, candidate {getattr(cand, f.name)!r}"
             for f in fields(ModelSpec) if f.compare and getattr(ref, f.name) != getattr(cand, f.name)]
    if diffs:
        raise VerificationError("mismatched architectures: " + "; ".join(diffs))


def default_input_ids(vocab_size: int, num_tokens: int, seq_len: int = DEFAULT_SEQ_LEN) -> torch.Tensor:
    """Deterministic pseudo-random ids [ceil(N/seq_len), min(N, seq_len)] (seed 0)."""
    if num_tokens <= 0:
        raise VerificationError(f"--num-tokens must be positive, got {num_tokens}")
    t = min(num_tokens, seq_len)
    b = -(-num_tokens // t)
    g = torch.Generator().manual_seed(DEFAULT_SEED)
    return torch.randint(0, vocab_size, (b, t), generator=g)


def logit_metrics(ref: torch.Tensor, cand: torch.Tensor) -> dict[str, float]:
    """ref, cand float32 [B, T, V] -> KL(ref || cand) per position (mean, max), top-1, max |delta|."""
    lp = torch.log_softmax(ref.double(), -1)
    lq = torch.log_softmax(cand.double(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)                          # [B, T]
    return {"kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "top1_agreement": float((ref.argmax(-1) == cand.argmax(-1)).double().mean()),
            "max_abs_logit_diff": float((ref - cand).abs().max())}


def _decode_expert(ckpt: Checkpoint, base: str, e: int) -> torch.Tensor:
    """Expert e of projection `base` as float32 [out, in], whatever the storage format."""
    fmt = ckpt.expert_format
    if fmt is ExpertFormat.MXFP4:
        return decode_mxfp4(ckpt.load_rows(f"{base}_blocks", e, e + 1)[0],
                            ckpt.load_rows(f"{base}_scales", e, e + 1)[0], dtype=torch.float32)
    if fmt is ExpertFormat.BF16:
        return ckpt.load_rows(base, e, e + 1)[0].t().float()
    return dequantize_nvfp4(ckpt.load_rows(base, e, e + 1)[0].t(),
                            ckpt.load_rows(f"{base}_weight_scale", e, e + 1)[0].t(),
                            ckpt.load(f"{base}_weight_scale_2"), dtype=torch.float32)


def compare_expert_weights(ref: Checkpoint, cand: Checkpoint) -> tuple[list[str], list[str]]:
    """(exact, inexact) expert projection names, decoding one expert at a time."""
    exact, inexact = [], []
    for layer in range(ref.spec.num_hidden_layers):
        for proj in projections(ref.spec):
            base = f"{experts_prefix(layer)}.{proj.name}"
            same = all(torch.equal(_decode_expert(ref, base, e), _decode_expert(cand, base, e))
                       for e in range(ref.spec.num_local_experts))
            (exact if same else inexact).append(base)
    return exact, inexact


def verify_modes(reference: Path, candidate: Path, modes: dict[bool, Thresholds],
                 ids: torch.Tensor | None = None, *, num_tokens: int = 256, stream: bool = True,
                 dtype: torch.dtype = torch.float32,
                 log: Callable[[str], None] | None = None) -> dict[bool, Report]:
    """Compare CANDIDATE with REFERENCE once per mode ({emulate_w4a4: thresholds}); the reference
    logits and the expert-weight comparison are computed once and shared by every mode."""
    from builder.runtime.model import GptOssRuntime
    from builder.runtime.weights import check_emulate_w4a4

    ref_ckpt, cand_ckpt = Checkpoint.open(reference), Checkpoint.open(candidate)
    check_same_architecture(ref_ckpt.spec, cand_ckpt.spec)
    if any(modes):
        check_emulate_w4a4(cand_ckpt)  # before the reference runs, not after
    if ids is None:
        ids = default_input_ids(ref_ckpt.spec.vocab_size, num_tokens)
    say = log or (lambda _: None)
    say(f"running reference {reference} on {ids.numel()} tokens")
    ref_logits = GptOssRuntime(ref_ckpt, dtype=dtype, stream=stream).logits(ids)
    say("comparing expert weights")
    exact, inexact = compare_expert_weights(ref_ckpt, cand_ckpt)
    reports = {}
    for emulate, thresholds in modes.items():
        say(f"running candidate {candidate}{' (W4A4 emulated)' if emulate else ''}")
        cand = GptOssRuntime(cand_ckpt, dtype=dtype, stream=stream, emulate_w4a4=emulate).logits(ids)
        metrics = logit_metrics(ref_logits, cand)
        passed = metrics["kl_mean"] <= thresholds.max_kl and metrics["top1_agreement"] >= thresholds.min_top1
        reports[emulate] = Report(**metrics, exact_tensors=exact, inexact_tensors=inexact,
                                  positions=int(ids.numel()), passed=passed, thresholds=thresholds)
    return reports


def verify(reference: Path, candidate: Path, ids: torch.Tensor | None = None, *, num_tokens: int = 256,
           thresholds: Thresholds = Thresholds(), stream: bool = True, emulate_w4a4: bool = False,
           dtype: torch.dtype = torch.float32,
           log: Callable[[str], None] | None = None) -> Report:
    """Run both checkpoints on the same tokens and compare logits and expert weights."""
    return verify_modes(reference, candidate, {emulate_w4a4: thresholds}, ids, num_tokens=num_tokens,
                        stream=stream, dtype=dtype, log=log)[emulate_w4a4]
