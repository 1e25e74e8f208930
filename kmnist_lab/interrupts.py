"""A process-wide record of Ctrl-C (SIGINT), importable before Keras.

Python raises a SIGINT's KeyboardInterrupt in whatever Python code runs when the
signal is handled, and some code drops it: a garbage-collection callback (JAX
registers one, `_xla_gc_callback`; Python prints "Exception ignored in ..." and goes
on), or a bare `except:`. A Ctrl-C pressed while `train.py` loaded its data was lost
that way, and the run trained to the end and exited 0. The scripts install
`on_signal` for their whole run (`scripts/_cli.py`), and
`kmnist_lab.callbacks.InterruptCheck` stops training once `received()` is true, also
for a Ctrl-C that arrived before training began. While it is installed, a
KeyboardInterrupt that Python could not raise (an "Exception ignored in ..." of a
callback) is not printed once the Ctrl-C is recorded (`_unraisable_hook`): it is not
lost, and its traceback would only clutter the one line the scripts end on.

SIGTERM, the signal of `kill`, `timeout`, container runtimes and batch schedulers,
is handled the same way where its handler is the default one (which ends the process
at once, leaving `status.json` at `running`): it raises `Terminated`, a
KeyboardInterrupt, so a run stops as on Ctrl-C, records `interrupted`, and resumes
when the command is re-run.
"""

from __future__ import annotations

import signal
import sys
import threading

_received: int | None = None  # the signal recorded
_previous_unraisable_hook = None


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised where Python's Ctrl-C raises KeyboardInterrupt."""


def on_signal(signum, frame):
    """SIGINT/SIGTERM handler: records the signal, then raises as Python does for
    Ctrl-C (`Terminated` for SIGTERM)."""
    global _received
    _received = signum
    raise interruption()


def interruption() -> KeyboardInterrupt:
    """The exception for the recorded signal: `Terminated` for SIGTERM, else a
    KeyboardInterrupt."""
    return Terminated() if _received == signal.SIGTERM else KeyboardInterrupt()


def _unraisable_hook(unraisable) -> None:
    """`sys.unraisablehook` while installed: drops the KeyboardInterrupt of a recorded
    Ctrl-C, hands anything else to the hook it replaced."""
    if (
        _received
        and unraisable.exc_type is not None
        and issubclass(unraisable.exc_type, KeyboardInterrupt)
    ):
        return
    (_previous_unraisable_hook or sys.__unraisablehook__)(unraisable)


def received() -> bool:
    """True once `on_signal` handled a Ctrl-C or SIGTERM (until `uninstall`)."""
    return _received is not None


def install() -> bool:
    """Installs `on_signal` in the main thread over Python's own SIGINT handler (not over
    a custom one, nor where SIGINT is ignored, as in a job a shell started with `&`),
    and over SIGTERM's default (each on its own); True when it installed either."""
    global _received, _previous_unraisable_hook
    if threading.current_thread() is not threading.main_thread():
        return False
    python_defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    ours = [sig for sig, handler in python_defaults.items() if signal.getsignal(sig) is handler]
    if ours:
        _received = None
        for sig in ours:
            signal.signal(sig, on_signal)
        if sys.unraisablehook is not _unraisable_hook:
            _previous_unraisable_hook = sys.unraisablehook
            sys.unraisablehook = _unraisable_hook
        return True
    return False


def uninstall() -> None:
    """Puts Python's own SIGINT and SIGTERM handlers back and forgets the recorded
    signal."""
    global _received, _previous_unraisable_hook
    _received = None
    if signal.getsignal(signal.SIGINT) is on_signal:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is on_signal:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.unraisablehook is _unraisable_hook:
        sys.unraisablehook = _previous_unraisable_hook or sys.__unraisablehook__
        _previous_unraisable_hook = None
