"""The one test every reader of JSON/YAML numbers shares (config.json, inventories, options YAML, flags)."""

from __future__ import annotations

import math
from typing import Any


def finite(v: Any) -> bool:
    """A real, finite number: an int or float, never a bool (YAML/JSON true is not 1), not NaN/Inf, and not
    an integer too large for a float (math.isfinite raises OverflowError on those)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False
