"""Shared fixtures: tiny synthetic datasets, quiet TensorFlow, no downloads."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests never download: `auto` and the full datasets fall back or fail fast.
os.environ.setdefault("KMNIST_LAB_NO_DOWNLOAD", "1")
# The suite runs on one backend, in process and in the script subprocesses it starts
# (which inherit this), so that a resumed run and its in-process reference compare like
# with like; `train.py`'s per-arch `--backend auto` and the other backends are tested
# explicitly (test_scripts.py, test_backends.py, ...).
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Scripts on JAX cache compiled programs (`_cli.jax_compilation_cache`): in the tests,
# in a folder of this session's own, not the user's ~/.cache, removed at the end.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="kmnist_lab_jax_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import gc  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _freeze_earlier_objects():
    """Keeps Python's cyclic garbage collector off the objects of earlier modules.

    Every Keras `clear_session()` (keras-tuner calls it twice per trial) runs a full
    `gc.collect()`, and the suite's process accumulates millions of objects (traced
    functions, modules, fixtures): late in the run each collection took over a second.
    Collecting once per test module, then `gc.freeze()`-ing what survived, moves those
    objects out of every later collection's reach (measured on test_training.py +
    test_tuning.py: 36 s of collections down to 5 s). Garbage of a test is still
    collected; only objects alive at a module's start and freed in a cycle later are
    kept until the process ends.
    """
    gc.collect()
    gc.freeze()
    yield


def make_images(n, seed=0, num_classes=10):
    """Class-dependent synthetic 28x28 uint8 images (learnable: a bright block per class)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 4)
        x[i, 2 + 6 * r : 8 + 6 * r, 2 + 6 * c : 8 + 6 * c] = 230
    return x, y.astype(np.int64)


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test, restored after.

    A process started in the background by a shell (`cmd &`, `nohup`) inherits SIGINT
    ignored, and Python then keeps it ignored: tests of Ctrl-C handling set it.
    """
    import signal

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def tiny_arrays():
    """(x, y) with 60 learnable synthetic images."""
    return make_images(60)


# Scripts are thin CLIs with `main(argv) -> int`; tests import and call them in-process.
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
