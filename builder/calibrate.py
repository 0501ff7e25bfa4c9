"""Calibration: activation amax per expert projection, collected with the streaming runtime.

`input_scale = float32(amax) / (6 * 448)`, one value per projection per layer: the maximum over all
experts of |activation entering that projection| (gate_up: the MoE input of routed tokens; down: the
SwiGLU output), exactly as Model Optimizer defines it. One sequence per forward, as its calibration
loop runs, in BF16 by default (the dtype Model Optimizer calibrates the BF16 model in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch

from builder.checkpoint import Checkpoint
from builder.errors import TrtkitError
from builder.runtime.hooks import AmaxCollector, input_scales  # noqa: F401  (re-exported)
from builder.runtime.io import load_id_rows

DEFAULT_TEXT = "calibration.txt"  # builder/data/calibration.txt, see its first paragraph
DEFAULT_SEQ_LEN = 128


class CalibrationError(TrtkitError):
    """Calibration data cannot be read or tokenized."""


@dataclass(frozen=True)
class CalibrationData:
    sequences: tuple[tuple[int, ...], ...]
    source: str  # human description recorded in the manifest

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    def describe(self) -> dict:
        return {"source": self.source, "sequences": len(self.sequences), "tokens": self.num_tokens}


def _chunk(ids: list[int], seq_len: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(ids[i:i + seq_len]) for i in range(0, len(ids), seq_len) if ids[i:i + seq_len])


def tokenize_text(src: Path, text: str) -> list[int]:
    path = Path(src) / "tokenizer.json"
    if not path.is_file():
        raise CalibrationError(f"{path}: not found; calibration text needs the checkpoint's tokenizer, "
                               "or pass --calib-input-ids IDS.json")
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for any malformed file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CalibrationError(f"{path}: cannot load the tokenizer ({reason}); restore tokenizer.json from the "
                               "source checkpoint, or pass --calib-input-ids IDS.json") from exc
    return tokenizer.encode(text).ids


def calibration_data(src: Path, *, input_ids: Path | None = None, text_file: Path | None = None,
                     seq_len: int = DEFAULT_SEQ_LEN) -> CalibrationData:
    """The calibration sequences from ids JSON, a text file, or the built-in default text."""
    if input_ids is not None and text_file is not None:
        raise CalibrationError("give --calib-input-ids or --calib-text, not both")
    if input_ids is not None:
        # the same checked reader as `trtkit forward --input-ids` (rows may differ in length here:
        # one forward per row); every bad file is one InputError naming it
        spec = Checkpoint.open(src).spec
        rows = load_id_rows(input_ids, spec.vocab_size, max_length=spec.max_position_embeddings)
        return CalibrationData(tuple(tuple(s) for s in rows), f"ids file {input_ids}")
    if text_file is not None:
        try:
            text = Path(text_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"{text_file}: cannot read calibration text ({exc})") from exc
        source = f"text file {text_file}"
    else:
        text = files("builder").joinpath("data", DEFAULT_TEXT).read_text()
        source = f"built-in default text (builder/data/{DEFAULT_TEXT})"
    ids = tokenize_text(src, text)
    if not ids:
        raise CalibrationError(f"calibration text from {source} tokenized to nothing")
    return CalibrationData(_chunk(ids, seq_len), f"{source}, tokenized with tokenizer.json, {seq_len}-token sequences")


def collect_amax(src: Path, data: CalibrationData, *, dtype: torch.dtype = torch.bfloat16,
                 stream: bool = True, progress: Callable[[int], None] | None = None
                 ) -> dict[str, float]:
    """{`model.layers.N.mlp.experts.<proj>`: amax} over the calibration sequences; `progress(1)` is
    called after each layer."""
    from builder.runtime.model import GptOssRuntime

    collector = AmaxCollector()
    runtime = GptOssRuntime(Checkpoint.open(src), dtype=dtype, stream=stream, on_expert_input=collector)
    # one sequence per forward (as Model Optimizer's loop), layer-outer so each layer is read once;
    # the lm_head is never computed: calibration needs the expert inputs only
    runtime.hidden_many([torch.tensor([seq], dtype=torch.int64) for seq in data.sequences], progress)
    return collector.by_projection()
