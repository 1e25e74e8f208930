"""A process-wide record of Ctrl-C (SIGINT), importable before Keras.

Python raises a SIGINT's KeyboardInterrupt in whatever Python code runs when the
signal is handled, and some code drops it: a garbage-collection callback (JAX
registers one, `_xla_gc_callback`; Python prints "Exception ignored in ..." and goes
on), or a bare `except:`. A Ctrl-C pressed while `train.py` loaded its data was lost
that way, and the run trained to the end and exited 0. The scripts install
`on_sigint` for their whole run (`scripts/_cli.py`), and
`kmnist_lab.callbacks.InterruptCheck` stops training once `received()` is true, also
for a Ctrl-C that arrived before training began.
"""

from __future__ import annotations

import signal
import threading

_received = False


def on_sigint(signum, frame):
    """SIGINT handler: records the Ctrl-C, then raises KeyboardInterrupt as Python does."""
    global _received
    _received = True
    raise KeyboardInterrupt


def received() -> bool:
    """True once `on_sigint` handled a Ctrl-C (until `uninstall`)."""
    return _received


def install() -> bool:
    """Installs `on_sigint` in the main thread over Python's own SIGINT handler (not over
    a custom one, nor where SIGINT is ignored); True when it did."""
    global _received
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        _received = False
        signal.signal(signal.SIGINT, on_sigint)
        return True
    return False


def uninstall() -> None:
    """Puts Python's own SIGINT handler back and forgets the recorded Ctrl-C."""
    global _received
    _received = False
    if signal.getsignal(signal.SIGINT) is on_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)
