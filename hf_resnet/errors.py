"""The errors a user meets: each message names what is wrong and the fix; the command line prints it as one
line and exits with code 2 (`cli.main`), never with a traceback."""

from __future__ import annotations


class HfResnetError(Exception):
    """Base of every error that is the user's to fix (configuration, data, model, too many bad images)."""


class ConfigError(HfResnetError, ValueError):
    """A recipe or flag that cannot work; the message says which field and how to fix it."""


class DataError(HfResnetError, ValueError):
    """The data cannot be trained on as configured; the message names the field and the fix."""


class ModelLoadError(HfResnetError, OSError):
    """The checkpoint cannot be read; the message names the ways on."""


class TooManySkippedImages(HfResnetError, ValueError):
    """More of a split's images failed to decode than `max_skipped_share` allows."""


class NonFiniteLossError(HfResnetError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the batch's images."""


class DiskFullError(HfResnetError, OSError):
    """A checkpoint could not be written for want of space; the previous complete one is untouched."""


class ExportError(HfResnetError, RuntimeError):
    """An export that cannot be made (a missing extra, no calibration images) or that failed its parity check."""


def first_line(err: BaseException, with_type: bool = False) -> str:
    """An exception's message cut to its first line (libraries' messages run to pages), or its type's name when
    it has none; `with_type` puts the type first, as `ValueError: ...`."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    if with_type:
        return f"{type(err).__name__}: {text}"
    return text or type(err).__name__
