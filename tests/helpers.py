"""Test helpers: write synthetic datasets to disk in the formats the loaders read."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from conftest import make_images


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialises a uint8 array as an IDX file (magic 0x00 0x00 0x08 ndim, sizes, data)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx_dataset(directory: Path, n_train=80, n_test=40, gz=False, seed=0) -> Path:
    """Writes the four IDX files of a learnable synthetic dataset into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    xtr, ytr = make_images(n_train, seed=seed)
    xte, yte = make_images(n_test, seed=seed + 1)
    arrays = {
        "train-images-idx3-ubyte": xtr,
        "train-labels-idx1-ubyte": ytr,
        "t10k-images-idx3-ubyte": xte,
        "t10k-labels-idx1-ubyte": yte,
    }
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        if gz:
            with gzip.open(directory / f"{name}.gz", "wb") as f:
                f.write(raw)
        else:
            (directory / name).write_bytes(raw)
    return directory


def swallow_a_ctrl_c_after_the_first_epoch(monkeypatch, callback_class) -> None:
    """Patches `callback_class.on_epoch_end` to raise SIGINT after epoch 0 and drop the
    KeyboardInterrupt, as Keras 3.15's `pythonify_logs` does with whatever it raised."""
    import signal

    original = callback_class.on_epoch_end

    def swallow_a_ctrl_c(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            try:
                signal.raise_signal(signal.SIGINT)
            except BaseException:
                pass

    monkeypatch.setattr(callback_class, "on_epoch_end", swallow_a_ctrl_c)
