"""Argument checks the plugins' ops share (they run on every call: cheap unless they fail)."""

from __future__ import annotations

import torch


def check_one_device(what: str, tensors: dict[str, torch.Tensor | None]) -> None:
    """Every given tensor (None: absent) on one device; else one ValueError naming each one's device."""
    given = [t for t in tensors.values() if t is not None]
    first = given[0].device
    if all(t.device == first for t in given[1:]):
        return
    *rest, last = (name for name, t in tensors.items() if t is not None)
    raise ValueError(f"{what}: {', '.join(rest)} and {last} must be on one device, got "
                     + ", ".join(f"{name} on {t.device}" for name, t in tensors.items() if t is not None))
