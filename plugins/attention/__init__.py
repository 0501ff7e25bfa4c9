"""gpt-oss attention: YaRN RoPE and sink attention (plain-torch reference)."""

from plugins.attention.reference import (
    apply_rope,
    attention,
    attention_mask,
    rope_cos_sin,
    yarn_concentration,
    yarn_inv_freq,
)

__all__ = ["apply_rope", "attention", "attention_mask", "rope_cos_sin", "yarn_concentration",
           "yarn_inv_freq"]
