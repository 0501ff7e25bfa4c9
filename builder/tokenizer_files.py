"""A minimal byte-level BPE tokenizer (Hugging Face `tokenizer.json`) for synthetic checkpoints.

Three special tokens, then one token per byte, no merges: any text round-trips, and ids stay far below
the vocab of every synthetic shape. Real checkpoints ship their own tokenizer, which is copied as is.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ("<|pad|>", "<|startoftext|>", "<|endoftext|>")
CHAT_TEMPLATE = ("{% for m in messages %}<|startoftext|>{{ m['role'] }}: {{ m['content'] }}<|endoftext|>"
                 "{% endfor %}{% if add_generation_prompt %}<|startoftext|>assistant: {% endif %}")


def byte_level_alphabet() -> list[str]:
    """The GPT-2 byte-to-unicode map: printable bytes stand for themselves, the rest shift past 255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, shift = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + shift)
            shift += 1
    return [chars[b] for b in range(256)]


def tokenizer_json(vocab_size: int) -> dict:
    needed = len(SPECIALS) + 256
    if vocab_size < needed:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level tokenizer ({needed})")
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({ch: len(SPECIALS) + b for b, ch in enumerate(byte_level_alphabet())})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in enumerate(SPECIALS)],
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }


def write_tokenizer_files(folder: Path, vocab_size: int) -> None:
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(vocab_size)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": SPECIALS[0], "bos_token": SPECIALS[1],
        "eos_token": SPECIALS[2], "model_max_length": 131072}, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"pad_token": SPECIALS[0], "bos_token": SPECIALS[1], "eos_token": SPECIALS[2]}, indent=2) + "\n")
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE + "\n")
