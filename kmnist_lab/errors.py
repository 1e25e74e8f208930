"""Errors a user can fix: scripts turn them into one line on stderr and exit code 2.

Every error here subclasses `ValueError`, so library callers that already catch
`ValueError` keep working, and scripts can tell a user mistake (exit 2) from a bug
(a traceback).
"""

import numbers


def is_real(value) -> bool:
    """True for a real-number argument: an int, a float or a NumPy scalar, not a bool.

    NaN and the infinities count: callers check the range and say which they allow.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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
