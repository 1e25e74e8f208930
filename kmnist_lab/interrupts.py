"""A process-wide record of Ctrl-C (SIGINT), importable before Keras.

Python raises a SIGINT's KeyboardInterrupt in whatever Python code runs when the
signal is handled, and some code drops it: a garbage-collection callback (JAX
registers one, `_xla_gc_callback`; Python prints "Exception ignored in ..." and goes
on), or a bare `except:`. A Ctrl-C pressed while `train.py` loaded its data was lost
that way, and the run trained to the end and exited 0. The scripts install
`on_sigint` for their whole run (`scripts/_cli.py`), and
`kmnist_lab.callbacks.InterruptCheck` stops training once `received()` is true, also
for a Ctrl-C that arrived before training began. While it is installed, a
KeyboardInterrupt that Python could not raise (an "Exception ignored in ..." of a
callback) is not printed once the Ctrl-C is recorded (`_unraisable_hook`): it is not
lost, and its traceback would only clutter the one line the scripts end on.
"""

from __future__ import annotations

import signal
import sys
import threading

_received = False
_previous_unraisable_hook = None


def on_sigint(signum, frame):
    """SIGINT handler: records the Ctrl-C, then raises KeyboardInterrupt as Python does."""
    global _received
    _received = True
    raise KeyboardInterrupt


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
    """True once `on_sigint` handled a Ctrl-C (until `uninstall`)."""
    return _received


def install() -> bool:
    """Installs `on_sigint` in the main thread over Python's own SIGINT handler (not over
    a custom one, nor where SIGINT is ignored); True when it did."""
    global _received, _previous_unraisable_hook
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        _received = False
        signal.signal(signal.SIGINT, on_sigint)
        if sys.unraisablehook is not _unraisable_hook:
            _previous_unraisable_hook = sys.unraisablehook
            sys.unraisablehook = _unraisable_hook
        return True
    return False


def uninstall() -> None:
    """Puts Python's own SIGINT handler back and forgets the recorded Ctrl-C."""
    global _received, _previous_unraisable_hook
    _received = False
    if signal.getsignal(signal.SIGINT) is on_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if sys.unraisablehook is _unraisable_hook:
        sys.unraisablehook = _previous_unraisable_hook or sys.__unraisablehook__
        _previous_unraisable_hook = None
