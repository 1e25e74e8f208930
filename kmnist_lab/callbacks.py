"""Training callbacks: per-epoch history, per-iteration losses, divergence guard.

All are backend-agnostic `keras.callbacks.Callback`s. The CSV loggers are
resume-aware: at the first epoch of a (possibly resumed) run they drop rows of
epochs that will be trained again, so a killed and resumed run has neither
duplicated nor missing epochs. Callback order matters (see `training.py`):
history/batches are written before `RunBackup` saves the epoch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from kmnist_lab import interrupts
from kmnist_lab.errors import RunFolderError
from kmnist_lab.runs import atomic_write_json, atomic_write_text, fsync_dir

log = logging.getLogger(__name__)


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
    """Rows of a CSV log kept from an earlier (interrupted) run of this folder."""
    if not path.is_file():
        return [], []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = list(reader.fieldnames or []), list(reader)
        for row in rows:
            int(row["epoch"])
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError):
        raise RunFolderError(
            f"{path} is unreadable, so the interrupted run cannot resume; pass --overwrite "
            "to start it over"
        ) from None
    return fields, rows


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
    """Writes `batches.csv`: `epoch, step, steps, loss` for every logged training step.

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


class InterruptCheck(keras.callbacks.Callback):
    """Makes a Ctrl-C stop training even where a library swallowed its KeyboardInterrupt.

    Keras 3.15 converts every step's logs to Python numbers inside a bare `except:`
    (`keras.src.utils.python_utils.pythonify_logs`). On JAX that conversion is where the
    host waits for the device, so a Ctrl-C often raises its KeyboardInterrupt there, where
    it is dropped: training went on to the end and the run completed. Used as a context
    manager in the main thread, this records SIGINT through `kmnist_lab.interrupts`
    (which raises as Python's own handler does); every callback hook and `check()` then
    raise KeyboardInterrupt once one was recorded. The scripts install that recorder for
    their whole run (`scripts/_cli.py`), so a Ctrl-C dropped before training began (in a
    garbage-collection callback while the data loaded) stops the run at its first hook.
    Under another SIGINT handler, or outside the main thread, it records nothing.
    """

    def __init__(self):
        super().__init__()
        self._pending: KeyboardInterrupt | None = None
        self._installed = False

    @property
    def pending(self) -> bool:
        """True once a Ctrl-C (or SIGTERM) was recorded (kept past `__exit__`)."""
        return self._pending is not None or interrupts.received()

    def _interruption(self) -> KeyboardInterrupt:
        return interrupts.interruption() if interrupts.received() else self._pending

    def __enter__(self) -> InterruptCheck:
        self._installed = interrupts.install()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pending = self._interruption() if self.pending else None
        if self._installed:
            interrupts.uninstall()
            self._installed = False
        self._pending = pending  # the record outlives the handler
        # A library may turn the KeyboardInterrupt into another error: TensorFlow, hit
        # while it traces a step, raised `TypeError: Failed to convert elements of
        # (None, 784) to Tensor`, and the script exited 1 with a traceback. It is a Ctrl-C.
        if pending is not None and exc_type is not None and issubclass(exc_type, Exception):
            raise pending from exc

    def check(self, *args, **kwargs) -> None:
        """Raises KeyboardInterrupt (`interrupts.Terminated` for SIGTERM) if a Ctrl-C
        arrived (even one swallowed since)."""
        if self.pending:
            raise self._interruption()

    on_epoch_begin = on_epoch_end = on_train_batch_begin = on_train_batch_end = check
    on_test_batch_end = on_test_end = check


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite training loss and remembers where.

    The loss Keras reports is the epoch's running mean, so it turns non-finite at
    the first non-finite batch loss and stays so. With `steps_per_execution = K`
    callbacks see every K-th step only: the first bad step is then one of
    `first_step .. step` (`steps_window`).

    Attributes:
        diverged_at: `(epoch, step)`, 1-based, or None.
        steps_window: `(first_step, step)`: the steps since the previous check.
    """

    def __init__(self):
        super().__init__()
        self.diverged_at: tuple[int, int] | None = None
        self.steps_window: tuple[int, int] | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1
        self._last_step = 0

    def on_train_batch_end(self, batch, logs=None):
        # Keras' iterator reports an epoch's last group of K steps as ending where a full
        # group would (step 12 of a 10-step epoch, with K = 4): cap it at the epoch's end.
        step = min(batch + 1, (self.params or {}).get("steps") or batch + 1)
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.diverged_at is None:
            self.diverged_at = (self._epoch, step)
            self.steps_window = (min(self._last_step + 1, step), step)
            self.model.stop_training = True
        self._last_step = step

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.diverged_at is None:
            self.diverged_at = (epoch + 1, self._last_step or 1)  # no batch logs were seen
            self.steps_window = (1, self._last_step or 1)
            self.model.stop_training = True


class RunBackup(keras.callbacks.Callback):
    """Backs up the whole training state after every epoch and restores it on restart.

    Equivalent to `keras.callbacks.BackupAndRestore`, but crash-safe at every
    instant: each epoch's state (`model.save_weights`, which holds the layer
    weights *and* the optimizer's variables: iteration count, hence the
    learning-rate schedule's position, Adam moments, Rprop step sizes, ASGD
    averages, ...; plus, in `meta.json`, the random generators' states, which
    `save_weights` leaves out) is written with its epoch number into a temporary folder that
    is renamed to `epoch-NNNNN` only when complete; the newest `keep` folders are
    kept. A restart loads the newest readable one (falling back to the previous
    if it is damaged) and continues from the next epoch. A state whose training
    loss is not finite is never saved, so a backup never holds a diverged model.

    Unlike `BackupAndRestore`, the backup is kept when `fit` ends: the caller
    deletes it once the run's outputs are written (`training.train` does so
    after `metrics.json`), so a kill during the final evaluation or export does
    not cost the training.

    Args:
        backup_dir: folder of the backups (used by this callback alone).
        keep: how many epoch states to keep (>= 1; 2 gives a fallback).

    Attributes:
        restored_epoch: number of completed epochs restored, or None.
        first_epochs: the (1-based) epochs at which each process that trained this run
            started, kept in the backups across resumptions: their times include
            that process's compilation, so throughput leaves them out.
    """

    _PATTERN = re.compile(r"epoch-(\d+)")

    def __init__(self, backup_dir, keep: int = 2):
        super().__init__()
        if keep < 1:
            raise ValueError(f"`keep` must be >= 1. Received: keep={keep}")
        self.backup_dir = Path(backup_dir)
        self.keep = keep
        self.restored_epoch: int | None = None
        self.first_epochs: list[int] = [1]

    def checkpoints(self) -> list[tuple[int, Path]]:
        """`(epoch, folder)` of the complete backups, newest first."""
        if not self.backup_dir.is_dir():
            return []
        found = []
        for path in self.backup_dir.iterdir():
            match = self._PATTERN.fullmatch(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
        return sorted(found, reverse=True)

    def on_train_begin(self, logs=None):
        self.restored_epoch = None
        self.first_epochs = [1]
        if self.backup_dir.is_dir():
            for leftover in self.backup_dir.glob(".tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        for epoch, path in self.checkpoints():
            try:
                meta = self._load(path) or {}
            except Exception as e:  # h5py/Keras raise many types on damaged files
                log.warning("backup %s is unreadable (%s: %s); trying an older one",
                            path, type(e).__name__, e)  # fmt: skip
                continue
            self.model._initial_epoch = epoch  # the hook `BackupAndRestore` uses
            self.restored_epoch = epoch
            earlier = [int(e) for e in meta.get("first_epochs", [1]) if int(e) <= epoch]
            self.first_epochs = sorted({*earlier, epoch + 1})
            log.info("restored the training state after epoch %d from %s", epoch, path)
            return

    def _load(self, path: Path) -> dict:
        """Restores the state saved in `path`; returns its `meta.json`."""
        meta = json.loads((path / "meta.json").read_text())
        epoch = int(meta["epoch"])
        if f"epoch-{epoch:05d}" != path.name:
            raise ValueError(f"meta.json says epoch {epoch}")
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(path / "state.weights.h5")
        states = _seed_states(self.model)
        saved = meta.get("seed_states", [])
        if len(saved) == len(states):
            for variable, value in zip(states, saved, strict=True):
                variable.assign(np.asarray(value, dtype=variable.dtype))
        return meta

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return
        self.save(epoch + 1)

    def save(self, epoch: int) -> Path:
        """Writes the state after `epoch` completed epochs; returns its folder."""
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.backup_dir / f".tmp-{os.getpid()}-{epoch}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        weights = tmp / "state.weights.h5"
        self.model.save_weights(weights)
        with open(weights, "rb+") as f:
            os.fsync(f.fileno())
        seeds = [keras.ops.convert_to_numpy(v).tolist() for v in _seed_states(self.model)]
        atomic_write_json(
            tmp / "meta.json",
            {"epoch": epoch, "seed_states": seeds, "first_epochs": self.first_epochs},
        )
        fsync_dir(tmp)
        final = self.backup_dir / f"epoch-{epoch:05d}"
        if final.exists():  # this epoch re-ran after a kill; older backups remain meanwhile
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(self.backup_dir)
        for _, old in self.checkpoints()[self.keep :]:
            shutil.rmtree(old, ignore_errors=True)
        return final


def _seed_states(model) -> list:
    """The states of the model's `keras.random.SeedGenerator`s (augmentation, dropout).

    `save_weights` leaves them out; without them a resumed run would draw epoch 1's
    random augmentations again instead of the next epoch's.
    """
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


def _scalar(value):
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "numpy"):
        value = keras.ops.convert_to_numpy(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def precise_batchnorm(model: keras.Model, x: np.ndarray, batch_size: int,
                      max_batches: int = 200) -> int:  # fmt: skip
    """Recomputes every BatchNormalization layer's moving statistics ("precise BN").

    Keras' moving mean and variance are exponential averages (momentum 0.9 in every
    model here, so over roughly the last 10 steps) of batch statistics taken while the weights were
    still changing. When the weights move a lot per step, as in full-batch training,
    they describe no model that exists, and inference-mode accuracy collapses while
    training accuracy is fine (report A's full-batch Rprop on Fashion-MNIST: 21.2 %
    test, 87.5 % once recomputed; docs/results.md). Precise BN (Wu & Johnson 2021,
    "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576, section 3) replaces them
    with the equal-weight average over K training batches of the final weights:
    forward pass k (from 0) runs in training mode with momentum k / (k + 1), so

        moving = (1 / K) * sum_k statistic(batch k).

    Args:
        model: a trained model (weights are not changed, only BatchNorm's moving
            statistics).
        x: training inputs, in order (shuffle them beforehand for a random subset).
        batch_size: the training batch size (batch statistics depend on it).
        max_batches: K at most; the first `max_batches` full batches of `x` are used
            (a trailing partial batch is left out; all of `x` when it is smaller than
            one batch).

    Returns:
        The number of BatchNormalization layers updated (0: nothing to do).
    """
    layers = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not layers or len(x) == 0:
        return 0
    momenta = [layer.momentum for layer in layers]
    # Full batches only (one smaller batch when `x` holds less than one): an equal-weight
    # average would give a trailing partial batch, down to a single row (variance 0, the
    # mean that row's), as much say as a full one.
    full = len(x) // batch_size
    starts = range(0, full * batch_size if full else len(x), batch_size)[:max_batches]
    try:
        for k, start in enumerate(starts):
            for layer in layers:
                layer.momentum = k / (k + 1)
            model(x[start : start + batch_size], training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    log.info("precise BatchNorm: %d layers' statistics from %d batches", len(layers), len(starts))
    return len(layers)
