"""`trtkit build`: convert (with calibration) -> verify -> plan -> render recipes -> bundle.

The bundle is written into a hidden folder beside OUT and renamed into place only when every step,
verification included, has passed: a failed build leaves no OUT.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder.calibrate import calibration_data, collect_amax, input_scales
from builder.convert import convert
from builder.parallel import SerialComm
from builder.spec import ModelSpec
from builder.writer import atomic_output, check_apart
from deploy.bundle import (
    VERIFICATION_REPORT,
    BundleError,
    VerifyPolicy,
    copy_source,
    run_verification,
    source_checksum_of,
    write_manifest,
    write_verification,
)
from deploy.operator_readme import write_operator_readme
from deploy.recipes_step import plan_bundle, render_bundle_recipes
from deploy.smoke import smoke_test
from recipes.errors import PlanError
from recipes.model import ModelRef

GPUS = ("h100", "h200", "b200", "gb200")


@dataclass(frozen=True)
class BuildOptions:
    gpus: tuple[str, ...] = GPUS
    isl: int = 1024
    osl: int = 1024
    smoke: bool = False
    include_source: bool = False
    force: bool = False
    calib_input_ids: Path | None = None
    calib_text: Path | None = None
    policy: VerifyPolicy = field(default_factory=VerifyPolicy)

    def __post_init__(self) -> None:
        unknown = [g for g in self.gpus if g not in GPUS]
        repeated = sorted({g for g in self.gpus if self.gpus.count(g) > 1})
        if unknown or repeated or not self.gpus:
            raise BundleError(f"--gpus {','.join(self.gpus) or '(none)'}: name each of {', '.join(GPUS)} at most "
                              "once (comma-separated)")
        for flag, value in (("--isl", self.isl), ("--osl", self.osl)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BundleError(f"{flag} {value!r}: must be a whole number of tokens >= 1")


def preflight(src: Path, opts: BuildOptions) -> None:
    """What step 4 would refuse, checked before minutes of calibration and conversion: SRC's config.json,
    the workload against its max_position_embeddings, and a deployment on every GPU of --gpus."""
    spec = ModelSpec.from_dir(src)  # CheckpointError naming SRC's config.json
    try:
        plan_bundle(ModelRef(name=Path(src).resolve().name, spec=spec), opts.gpus, opts.isl, opts.osl)
    except PlanError as exc:
        raise BundleError(f"{exc} (checked before any work; nothing was written)") from None


def build(src: Path, out: Path, opts: BuildOptions, log: Callable[[str], None] = print) -> dict:
    """Build the bundle; return its manifest. Raises BundleError when verification fails."""
    src, out = Path(src), Path(out)
    check_apart(src, out)  # --force must never replace a folder holding the source
    preflight(src, opts)
    with atomic_output(out, opts.force, SerialComm()) as tmp:
        ckpt = tmp / "checkpoint"
        data = calibration_data(src, input_ids=opts.calib_input_ids, text_file=opts.calib_text)
        log(f"[1/5] calibrating on {data.num_tokens} tokens ({data.source})")
        amax = collect_amax(src, data)
        log("[2/5] converting to NVFP4 (W4A4, calibrated)")
        result = convert(src, ckpt, input_scales=input_scales(amax),
                         calibration={**data.describe(), "dtype": "bfloat16", "amax": amax})
        log("[3/5] verifying against the source")
        exact, w4a4 = run_verification(src, ckpt, opts.policy, log)
        if not write_verification(tmp, exact, w4a4, opts.policy):
            raise BundleError(
                f"verification failed: weights-only KL mean {exact['kl_mean']:.3g} (limit "
                f"{opts.policy.max_kl:g}), top-1 {exact['top1_agreement']:.4f} (min {opts.policy.min_top1:g}); "
                f"W4A4 KL mean {w4a4['kl_mean']:.3g} (limit {opts.policy.w4a4_max_kl:g}); nothing was written")
        log(f"[4/5] planning and rendering recipes for {', '.join(opts.gpus)}")
        source_checksum = source_checksum_of(ckpt)
        recipes = render_bundle_recipes(ckpt, src, tmp / "recipes", gpus=opts.gpus, isl=opts.isl,
                                        osl=opts.osl, source_checksum=source_checksum)
        if opts.include_source:
            copy_source(src, tmp / "source")
        smoke = smoke_test(ckpt) if opts.smoke else {"ran": False, "reason": "not requested (--smoke)"}
        if opts.smoke and not smoke["ran"]:
            log(f"smoke test skipped: {smoke['reason']}")
        cast = result.manifest["cast"]["mxfp4_blocks"]
        write_operator_readme(tmp, src=src, recipes=recipes, exact=exact, w4a4=w4a4, cast=cast)
        log("[5/5] writing the manifest")
        manifest = write_manifest(tmp, src=src, source_checksum=source_checksum,
                                  include_source=opts.include_source,
                                  extra={"verification": {"passed": True, "report": VERIFICATION_REPORT},
                                         "smoke_test": smoke, "cast": cast,
                                         "workload": {"isl": opts.isl, "osl": opts.osl},
                                         "recipes": recipes})
    return json.loads(json.dumps(manifest))
