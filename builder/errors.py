"""Domain errors. The library raises these; the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class TrtkitError(Exception):
    """A user-facing error: the message names the file/tensor/field at fault and the fix."""

    exit_code = 1


class CheckpointError(TrtkitError):
    """A checkpoint folder is malformed: bad config, missing/unexpected tensors, corrupt files."""


class UnsupportedArchitecture(TrtkitError):
    """The config names a model family trtkit does not convert."""


class OutputError(TrtkitError):
    """The output location cannot be written (exists, no space, not a directory)."""
