"""A reference gpt-oss runtime over checkpoint folders (any expert format), for checking conversions."""

from builder.runtime.hooks import AmaxCollector
from builder.runtime.io import InputError, check_logits_path, load_input_ids, parse_input_ids, save_logits
from builder.runtime.model import COMPUTE_DTYPES, ExpertInputCallback, GptOssRuntime, KVCache
from builder.runtime.weights import RuntimeModeError

__all__ = ["COMPUTE_DTYPES", "AmaxCollector", "ExpertInputCallback", "GptOssRuntime", "InputError", "KVCache",
           "RuntimeModeError", "check_logits_path", "load_input_ids", "parse_input_ids", "save_logits"]
