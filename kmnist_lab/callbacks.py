"""Training callbacks: per-epoch history, per-iteration losses, divergence guard.

All are backend-agnostic `keras.callbacks.Callback`s. The CSV loggers are
resume-aware: at the first epoch of a (possibly resumed) run they drop rows of
epochs that will be trained again, so a killed and resumed run has neither
duplicated nor missing epochs. Callback order matters (see `training.py`):
history/batches are written before `BackupAndRestore` saves the epoch.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import keras
import numpy as np

from kmnist_lab.runs import atomic_write_text


def current_learning_rate(optimizer) -> float:
    """The optimizer's learning rate at its current iteration (schedules evaluated)."""
    lr = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr))


class EpochStats(keras.callbacks.Callback):
    """Adds `epoch_time` (s, training + validation) and `learning_rate` to the epoch logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._lr = current_learning_rate(self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self._lr
            logs["epoch_time"] = time.perf_counter() - self._start


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class HistoryLogger(keras.callbacks.Callback):
    """Writes `history.csv`: one row per epoch (1-based `epoch`) with every log value.

    The file is rewritten atomically each epoch (it is small), so it is never torn.
    """

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        self._rows: list[dict] | None = None
        self._fields: list[str] = []

    def on_epoch_begin(self, epoch, logs=None):
        if self._rows is None:  # first epoch of this process: drop epochs to be re-run
            self._fields, rows = _read_rows(self.path)
            self._rows = [r for r in rows if int(r["epoch"]) <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: _scalar(v) for k, v in (logs or {}).items()}}
        for key in row:
            if key not in self._fields:
                self._fields.append(key)
        self._rows.append(row)
        _write_rows(self.path, self._fields, self._rows)


class BatchLogger(keras.callbacks.Callback):
    """Writes `batches.csv`: `epoch, step, loss` for every logged training step.

    Keras reports the epoch's running mean loss (weighted by batch size). The
    batch loss is recovered exactly from consecutive means:
    `loss_t = (m_t * n_t - m_s * n_s) / (n_t - n_s)` with `n` the samples seen.
    With `steps_per_execution = K` callbacks fire every K steps, so a row holds the
    mean loss over the K steps since the previous row (`steps` column).
    """

    def __init__(self, path, num_samples: int, batch_size: int):
        super().__init__()
        self.path = Path(path)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self._fields = ["epoch", "step", "steps", "loss"]
        self._kept: list[dict] | None = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._kept is None:
            _, rows = _read_rows(self.path)
            self._kept = [r for r in rows if int(r["epoch"]) <= epoch]
            _write_rows(self.path, self._fields, self._kept)
        self._epoch = epoch + 1
        self._prev_step = 0
        self._prev_total = 0.0
        self._prev_seen = 0
        self._pending: list[dict] = []

    def on_train_batch_end(self, batch, logs=None):
        if not logs or "loss" not in logs:
            return
        # Keras may report the last partial execution past the epoch's end: cap it.
        step = min(batch + 1, -(-self.num_samples // self.batch_size))
        seen = min(step * self.batch_size, self.num_samples)
        total = float(logs["loss"]) * seen
        if seen > self._prev_seen:
            loss = (total - self._prev_total) / (seen - self._prev_seen)
            self._pending.append(
                {"epoch": self._epoch, "step": step, "steps": step - self._prev_step, "loss": loss}
            )
        self._prev_step, self._prev_total, self._prev_seen = step, total, seen

    def on_epoch_end(self, epoch, logs=None):
        self._kept.extend(self._pending)
        _write_rows(self.path, self._fields, self._kept)


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite training loss and remembers where.

    Attributes:
        diverged_at: `(epoch, step)`, 1-based, or None.
    """

    def __init__(self):
        super().__init__()
        self.diverged_at: tuple[int, int] | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.diverged_at is None:
            self.diverged_at = (self._epoch, batch + 1)
            self.model.stop_training = True


def _scalar(value):
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "numpy"):
        value = keras.ops.convert_to_numpy(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
