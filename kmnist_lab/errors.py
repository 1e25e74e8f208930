"""Errors a user can fix: scripts turn them into one line on stderr and exit code 2.

Every error here subclasses `ValueError`, so library callers that already catch
`ValueError` keep working, and scripts can tell a user mistake (exit 2) from a bug
(a traceback).
"""

import difflib
import numbers


def is_real(value) -> bool:
    """True for a real-number argument: an int, a float or a NumPy scalar, not a bool.

    NaN and the infinities count: callers check the range and say which they allow.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value) -> bool:
    """True for an integer argument: a Python int or a NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def did_you_mean(name, choices) -> str:
    """` Did you mean 'x'?` for the choice closest to a misspelt `name`, else "".

    Uses `difflib.get_close_matches` (ratio >= 0.6): `bnmlp` -> `bn_mlp`, `epoch` ->
    `epochs`, `marginn` -> `margin`; a name like none of them gets no guess.
    """
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, [str(c) for c in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class KmnistLabError(ValueError):
    """Base class of every user-facing error raised by kmnist_lab."""


class ConfigError(KmnistLabError):
    """An invalid option value, unknown component name or contradictory options."""


class DataError(KmnistLabError):
    """A dataset file is missing, truncated, corrupt or has an unexpected checksum."""


class RunFolderError(KmnistLabError):
    """A run folder exists already, is locked by another process or is not writable."""


class ModelLoadError(KmnistLabError):
    """A path is not a loadable SavedModel / `.keras` file, or data has the wrong shape."""
