"""TensorFlow's start-up log lines, filtered by TensorFlow's own log level.

TensorFlow's C++ libraries log through Abseil, and lines logged before
`absl::InitializeLog()` go to stderr whatever `TF_CPP_MIN_LOG_LEVEL` says
(https://github.com/abseil/abseil-cpp/pull/1718). Importing TensorFlow 2.21 therefore
prints, twice, an Abseil preamble and INFO lines ("oneDNN custom operations are on",
"Could not find cuda drivers"), and listing its devices an ERROR ("failed call to
cuInit") on every machine without an NVIDIA driver. The scripts run the first
`import tensorflow` (and the device listing) with file descriptor 2 sent to a
temporary file, then write back what `TF_CPP_MIN_LOG_LEVEL` lets through:
`filter_lines`. Nothing else is dropped: Python warnings, tracebacks and TensorFlow's
own lines at or above the level are written back in order.

Off when `TF_CPP_MIN_LOG_LEVEL` is 0 or unset (everything shows, as TensorFlow
prints it), or when `TF_CPP_MAX_VLOG_LEVEL` asks for verbose logs. Should TensorFlow's
import crash the process, the held lines are lost: re-run with `TF_CPP_MIN_LOG_LEVEL=0`
to see them.

Scripts only; the library never redirects file descriptors.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
# glog/absl prefix: severity letter, MMDD, time, thread id, file:line]
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
NO_DRIVER = "Could not find cuda drivers"
CUINIT_FAILED = "failed call to cuInit"


def min_log_level() -> int:
    """`TF_CPP_MIN_LOG_LEVEL` as TensorFlow reads it (0 when unset or not a number)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filter_lines(text: str, level: int) -> str:
    """The lines of `text` that TensorFlow's log `level` lets through.

    Drops log lines whose severity (I=0, W=1, E=2, F=3) is below `level`, the Abseil
    preamble and, when the same output says there is no NVIDIA driver, the cuInit
    failure (CUDA cannot start without one; it is not an error there), both when
    `level` >= 1. Every other line, log line or not, is kept in order; at level 0,
    everything.

    Args:
        text: what was written to stderr.
        level: `TF_CPP_MIN_LOG_LEVEL`.

    Returns:
        The kept lines, joined.
    """
    lines = text.splitlines(keepends=True)
    no_driver = any(NO_DRIVER in line for line in lines)
    kept = []
    for line in lines:
        if level >= 1 and line.startswith(ABSL_PREAMBLE):
            continue
        match = _LOG_LINE.match(line)
        if match and _SEVERITY[match.group(1)] < level:
            continue
        if match and level >= 1 and no_driver and CUINIT_FAILED in line:
            continue
        kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def filtered_stderr(level: int):
    """Holds everything written to file descriptor 2 and writes back `filter_lines`.

    Without a file descriptor 2 (a process started with it closed) nothing is held.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                held.seek(0)
                kept = filter_lines(held.read().decode("utf-8", "replace"), level)
                if kept:
                    sys.stderr.write(kept)
                    sys.stderr.flush()
    finally:
        os.close(saved)


class _FilteredLoader(importlib.abc.Loader):
    """TensorFlow's own loader, its module run inside `filtered_stderr`."""

    def __init__(self, loader, finder: _FirstTensorFlowImport):
        self._loader = loader
        self._finder = finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._finder.remove()
        with filtered_stderr(self._finder.level):
            self._loader.exec_module(module)
            # CUDA starts (and logs cuInit's failure) when devices are first listed. A
            # failure here would come again, reported, where the devices are used.
            with contextlib.suppress(Exception):
                module.config.list_physical_devices()

    def __getattr__(self, name):
        if name.startswith("_"):  # our own, not yet set (a copy): no recursion
            raise AttributeError(name)
        return getattr(self._loader, name)


class _FirstTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as the other finders do and wraps its loader in
    `_FilteredLoader`, until the first import runs (a `find_spec` that only checks
    whether TensorFlow is installed imports nothing, and leaves the finder in place)."""

    def __init__(self, level: int):
        self.level = level
        self._finding = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self._finding:
            return None
        self._finding = True  # the search below comes back here: the other finders answer
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader, self)
        return spec

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)


def quiet_tensorflow_start() -> bool:
    """Filters the first `import tensorflow` of this process (see the module docstring).

    Returns:
        Whether the filter is in place: False when TensorFlow is already imported, the
        log level is 0, verbose logging is on, or the filter is installed already.
    """
    level = min_log_level()
    if (
        level < 1
        or os.environ.get("TF_CPP_MAX_VLOG_LEVEL")
        or "tensorflow" in sys.modules
        or any(isinstance(finder, _FirstTensorFlowImport) for finder in sys.meta_path)
    ):
        return False
    sys.meta_path.insert(0, _FirstTensorFlowImport(level))
    return True
