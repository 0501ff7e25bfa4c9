"""Planner errors. All are `TrtkitError`s: the CLI prints them as one line and exits 1."""

from __future__ import annotations

from builder.errors import TrtkitError


class PlanError(TrtkitError):
    """A planning request that cannot be answered as asked (unknown GPU, bad workload, no candidate)."""


class LayoutError(PlanError):
    """A parallel layout that TensorRT-LLM would reject (the message shows the arithmetic and the fix)."""


class RecipeError(PlanError):
    """A rendered recipe that breaks a rule when it is loaded back."""


class PlanUsageError(PlanError):
    """Options that cannot apply as given (exit code 2, as click's usage errors)."""

    exit_code = 2
