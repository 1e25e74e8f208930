"""keras-tuner tuners and oracles with the fixes and bookkeeping our searches need.

- Every trial reports its final-epoch validation metrics (a trial "of E epochs" is
  scored like report A's cell after E epochs), the epochs it trained, its wall time
  and the process's resident memory; its checkpoint holds the final-epoch weights
  and optimizer state, which Hyperband continues from (optimizer state included:
  `HyperbandTuner._build_hypermodel`) and which the best model is restored from.
- The oracle records which tuner (worker) ran each trial, in `oracle.json`, so the
  chief knows it without access to the workers' disks.
- `GridSearchOracle` forgets its position when reloaded (keras-tuner issue #1055:
  a resumed grid dies with `KeyError` in `LinkedList.next`) and hands out one new
  cell only after the previous one ended, so a second worker sits idle. Ours
  persists its state and chains new cells from running ones.
- On a finite space (only choices, booleans, fixed and stepped numbers), random
  search and Hyperband draw configurations without replacement: keras-tuner
  draws with replacement and stops the whole search after 20 collisions, which on
  report A's 12-cell (batch x lr) space happens before a bracket is even filled.
- A worker polling an oracle that has nothing to hand out backs off instead of
  spinning on gRPC.
- keras-tuner's state files (`oracle.json`, `trial_*/trial.json`, `tuner0.json`)
  are written atomically, so a search killed at any moment can be resumed.
- keras-tuner takes any process with IPython installed for a notebook and wrote
  IPython's `clear_output` escape codes (`ESC[2K`) into terminals and log files at
  every trial's end: outside IPython it prints a blank line instead.
- keras-tuner's console lines give the trial id beside keras-tuner's count from 1:
  "Search: Running Trial #4 (id 03)".
- A trial whose training loss turns non-finite is stopped there (silently: Keras'
  `TerminateOnNaN` printed a line even under `-q`) and reported as diverged, with the
  worst possible score so that keras-tuner does not retry it and promotes it only when
  a Hyperband round has no model that trained left to promote, and
  never with a NaN (keras-tuner turned a NaN score into a retried INVALID trial, and
  NaN metrics into `All-NaN axis encountered` warnings). `tuning.results` lists it as
  `DIVERGED`; it is never the best trial.
- keras-tuner's `Reloading Tuner from ...` line, printed when a search resumes, is a
  log line (INFO: not under `-q`).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import math
import os
import random
import re
import resource
import sys
import time

import keras
import keras_tuner as kt
import numpy as np
from keras_tuner.engine.hyperparameters import Boolean, Choice, Fixed, Float, Int
from keras_tuner.src import utils as kt_utils
from keras_tuner.src.engine import oracle as kt_oracle

from kmnist_lab import runs
from tuning import results

log = logging.getLogger(__name__)

OBJECTIVE = kt.Objective("val_accuracy", direction="max")
# What a diverged trial scores for keras-tuner: the worst val accuracy there is, so no
# tuner prefers it (Hyperband promotes it only when every other candidate of a round has
# been promoted, and the continuation then diverges again at its first step; Bayesian
# optimisation learns to avoid its region); never NaN, which keras-tuner would retry as
# an INVALID trial.
DIVERGED_SCORE = 0.0
# Above this many configurations a space is sampled like a continuous one.
MAX_ENUMERATED = 200_000


def _not_a_notebook_outside_ipython() -> None:
    """Sets keras-tuner's `IS_NOTEBOOK` to False when no IPython shell is running.

    keras-tuner 1.4.8 computes it as `"Terminal" not in
    IPython.get_ipython().__class__.__name__`, which is True for `NoneType`, so any
    script run where IPython is merely installed counted as a notebook.
    """
    try:
        import IPython

        shell = IPython.get_ipython()
    except ImportError:
        shell = None
    if shell is None:
        kt_utils.IS_NOTEBOOK = False


_not_a_notebook_outside_ipython()


def resident_memory_mb() -> float:
    """Current resident set size of this process in MB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_state(path, state: dict) -> None:
    """keras-tuner's `save_json`, atomic on local disks (a kill never leaves half a file)."""
    if "://" in str(path):
        kt_utils.save_json(path, state)
    else:
        runs.atomic_write_text(path, json.dumps(state))


# ----------------------------------------------------------------------- oracles


def _hp_values(hp) -> list | None:
    """The finite list of values of one hyperparameter, or None if continuous."""
    if isinstance(hp, Choice):
        return list(hp.values)
    if isinstance(hp, Boolean):
        return [False, True]
    if isinstance(hp, Fixed):
        return [hp.value]
    if isinstance(hp, (Int, Float)) and hp.step is not None:
        return list(hp.values)
    if isinstance(hp, Int):
        return list(range(hp.min_value, hp.max_value + 1))
    return None


def enumerate_space(hyperparameters: kt.HyperParameters, limit: int = MAX_ENUMERATED):
    """Every configuration (active values only) of a finite space, or None.

    None when a hyperparameter is continuous or there are more than `limit`.
    """
    space = list(hyperparameters.space)
    choices = [_hp_values(hp) for hp in space]
    if any(c is None for c in choices):
        return None
    out: list[dict] = []

    def walk(i: int, values: dict) -> bool:
        if i == len(space):
            if len(out) == limit:  # this configuration would be one too many
                return False
            out.append(dict(values))
            return True
        hp = space[i]
        if not all(cond.is_active(values) for cond in hp.conditions):
            return walk(i + 1, values)
        for value in choices[i]:
            values[hp.name] = value
            if not walk(i + 1, values):
                return False
            del values[hp.name]
        return True

    return out if walk(0, {}) else None


class TrialDisplay(kt_oracle.Display):
    """keras-tuner's console lines, with the trial id beside keras-tuner's number.

    keras-tuner counts trials from 1 ("Search: Running Trial #4", "Trial 4 Complete")
    while the trial's folder, `trials.csv`, the progress of a `--workers` search and the
    summaries name it by its id, which counts from 0 ("03"). The lines now read
    "Search: Running Trial #4 (id 03)" and "Trial 4 (id 03) Complete [...]".
    """

    _HEAD = re.compile(r"^(Search: Running Trial #\d+|Trial \d+)(?= Complete|$)", re.MULTILINE)

    def _with_id(self, show, trial, rewrite=None) -> None:
        # `redirect_stdout` swaps the process's stdout: safe here, where keras-tuner's
        # oracle lock serialises the calls (and its gRPC server runs one thread).
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                show(trial)
        finally:  # what was printed, even if `show` failed
            text = self._HEAD.sub(rf"\1 (id {trial.trial_id})", out.getvalue(), count=1)
            sys.stdout.write(rewrite(trial, text) if rewrite else text)

    def on_trial_begin(self, trial):
        self._with_id(super().on_trial_begin, trial)

    def on_trial_end(self, trial):
        self._with_id(super().on_trial_end, trial, rewrite=self._say_diverged)

    def _say_diverged(self, trial, text: str) -> str:
        """A diverged trial's score line says so, not `val_accuracy: 0.0` (the stand-in
        score that ranks it last), and so does the best so far when every trial diverged."""
        name = re.escape(self.oracle.objective.name)
        point = results.diverged_at(trial)
        if point is not None:
            text = re.sub(
                rf"^({name}): .*$",
                lambda m: f"{m[1]}: none, diverged (non-finite loss at "
                f"{results.where_text(point)}; ranked last)",
                text, count=1, flags=re.MULTILINE,
            )  # fmt: skip
        best = self.oracle.get_best_trials()
        if best and results.diverged_at(best[0]) is not None:
            text = re.sub(
                rf"^(Best {name} So Far): .*$",
                lambda m: f"{m[1]}: none (every trial so far diverged)",
                text, count=1, flags=re.MULTILINE,
            )  # fmt: skip
        return text


class _OracleMixin:
    """Records the tuner id that ran each trial; samples finite spaces without replacement."""

    def __init__(self, *args, seed=None, **kwargs):
        super().__init__(*args, seed=seed, **kwargs)
        self._display = TrialDisplay(oracle=self, verbose=self._display.verbose)
        if seed is not None and self.seed != seed:
            # keras-tuner reads a falsy seed as "none" (`seed or random.randint(...)`), so
            # `--seed 0`, the default, drew a new oracle seed every time: not reproducible.
            self.seed = self._seed_state = seed
            if hasattr(self, "_make_gpr"):  # Bayesian: its random state and regressor
                self._random_state = np.random.RandomState(seed)
                self.gpr = self._make_gpr()

    def _workers(self) -> dict:
        if not hasattr(self, "_kmnist_workers"):
            self._kmnist_workers = {}
        return self._kmnist_workers

    @kt.synchronized
    def create_trial(self, tuner_id):
        trial = super().create_trial(tuner_id)
        if trial.status == kt.engine.trial.TrialStatus.RUNNING:
            self._workers()[trial.trial_id] = tuner_id
            self.save()
        return trial

    @kt.synchronized
    def end_trial(self, trial):
        super().end_trial(trial)
        # keras-tuner saves before it drops the trial from `ongoing_trials`, so a
        # kill right after would run the finished trial again on resume.
        self.save()

    def reload(self):
        super().reload()
        # keras-tuner writes a new trial's trial.json before oracle.json: a process killed
        # between the two leaves a RUNNING trial the oracle never started, which no
        # resume would retry (it stayed RUNNING, its cell unrun). Forget it, as if it had
        # never been created: the next trial takes its id and its folder.
        for trial_id in [t for t in self.trials if t not in self.start_order]:
            del self.trials[trial_id]
        done = ("COMPLETED", "FAILED")
        self._retry_queue = [t for t in self._retry_queue if self.trials[t].status not in done]

    def save(self):
        write_state(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        write_state(
            os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state()
        )

    def worker_of(self, trial_id: str) -> str | None:
        return self._workers().get(trial_id)

    def get_state(self):
        state = super().get_state()
        state["kmnist_workers"] = dict(self._workers())
        return state

    def set_state(self, state):
        super().set_state(state)
        self._kmnist_workers = dict(state.get("kmnist_workers", {}))

    def _random_values(self):
        combos = enumerate_space(self.hyperparameters)
        if combos is None:
            return super()._random_values()
        untried = [c for c in combos if not self._duplicate(c)]
        if not untried:
            return None
        rng = random.Random(self._seed_state)
        self._seed_state += 1
        return dict(rng.choice(untried))


class GridOracle(_OracleMixin, kt.oracles.GridSearchOracle):
    """`GridSearchOracle` that survives a reload and feeds several workers at once."""

    def populate_space(self, trial_id):
        response = super().populate_space(trial_id)
        if response["status"] == kt.engine.trial.TrialStatus.RUNNING and (
            trial_id not in self._populate_next
        ):
            # The whole space is declared before trial 0 (no hyperparameter can
            # appear during a trial), so the next cell can follow a running one.
            self._populate_next.append(trial_id)
        return response

    def get_state(self):
        state = super().get_state()
        order, index = [], self._ordered_ids._next_index[None]
        while index is not None:
            order.append(self._ordered_ids._memory[index])
            index = self._ordered_ids._next_index[index]
        state["grid_order"] = order
        state["grid_populate_next"] = list(self._populate_next)
        return state

    def set_state(self, state):
        super().set_state(state)
        # Older states (or keras-tuner's own) lack the order: trial start order is it.
        order = state.get("grid_order") or list(self.start_order)
        self._ordered_ids = type(self._ordered_ids)()
        for trial_id in order:
            self._ordered_ids.insert(trial_id)
        pending = state.get("grid_populate_next")
        if pending is None:
            pending = order[-1:]
        self._populate_next = [t for t in pending if t in self.trials]
        # Trials that ended since are chained from as well (duplicates are skipped).
        for trial_id in order:
            if trial_id not in self._populate_next:
                self._populate_next.append(trial_id)


class RandomOracle(_OracleMixin, kt.oracles.RandomSearchOracle):
    """Random search; finite spaces are sampled without replacement."""


class BayesianOracle(_OracleMixin, kt.oracles.BayesianOptimizationOracle):
    """Gaussian-process Bayesian optimisation (keras-tuner's), with worker records.

    On a finite space configurations are not repeated: keras-tuner's optimiser of
    the acquisition returns the same grid point again and again once the initial
    random points are in (each a full retraining of a configuration already
    scored); ours then takes the untried configuration the Gaussian process ranks
    best, and stops when none is left.
    """

    def populate_space(self, trial_id):
        response = super().populate_space(trial_id)
        values = response.get("values")
        running = kt.engine.trial.TrialStatus.RUNNING
        if response.get("status") != running or not values or not self._duplicate(values):
            return response
        combos = enumerate_space(self.hyperparameters)
        if combos is None:  # a continuous space: keras-tuner's behaviour
            return response
        untried = [c for c in combos if not self._duplicate(c)]
        if not untried:
            status = kt.engine.trial.TrialStatus
            return {
                "status": status.IDLE if self.ongoing_trials else status.STOPPED,
                "values": None,
            }
        space = self._nonfixed_space()
        x = np.array(
            [[hp.value_to_prob(c.get(hp.name, hp.default)) for hp in space] for c in untried]
        )
        mean, std = self.gpr.predict(x, return_std=True)
        # keras-tuner's acquisition (minimised): the scores it fits are negated for "max".
        bound = np.ravel(mean) - self.beta * np.ravel(std)
        return {"status": running, "values": dict(untried[int(np.argmin(bound))])}


class HyperbandOracle(_OracleMixin, kt.oracles.HyperbandOracle):
    """Hyperband; finite spaces are sampled without replacement; optional trial cap."""

    def __init__(self, *args, max_trials=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_trials = max_trials

    def populate_space(self, trial_id):
        response = super().populate_space(trial_id)
        values = response.get("values") or {}
        past = values.get("tuner/trial_id")
        if past in self.trials:
            # keras-tuner labels a promoted model with the newest bracket; with
            # several workers an older bracket may still be promoting.
            values["tuner/bracket"] = self.trials[past].hyperparameters.values["tuner/bracket"]
        return response


# ------------------------------------------------------------------------ tuners


class RecycleProcess(Exception):
    """Raised between trials when the process should restart to give memory back."""


class SearchTuner(kt.Tuner):
    """`kt.Tuner` whose trials report final-epoch metrics, epochs, time and memory."""

    def __init__(self, *args, recycle_mb: float | None = None, **kwargs):
        # keras-tuner prints `Reloading Tuner from .../tuner0.json` when it resumes a
        # search, verbose or not: a log line instead, which `-q` leaves out.
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                super().__init__(*args, **kwargs)
        finally:
            for line in out.getvalue().splitlines(keepends=True):
                if line.startswith("Reloading Tuner from "):
                    log.info("%s", line.rstrip("\n"))
                else:
                    sys.stdout.write(line)
        self._idle_polls = 0
        # TensorFlow keeps every traced Keras train/test function (and the model
        # and optimizer buffers it captured) alive after `clear_session()`:
        # about 15 MB per MLP trial, 45 MB with XLA, more for bigger models.
        # Past `recycle_mb` of growth the search stops between two trials so
        # the process can restart itself and resume (see `tuning.search`).
        self.recycle_mb = recycle_mb
        self.rss_start_mb = resident_memory_mb()

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        write_state(self._get_tuner_fname(), self.get_state())

    def run_trial(self, trial, *args, **kwargs):
        start = time.perf_counter()
        hp = trial.hyperparameters
        kwargs["callbacks"] = self._deepcopy_callbacks(kwargs.get("callbacks", []))
        model = self._try_build(hp)  # clears the Keras session first
        history = self.hypermodel.fit(hp, model, *args, **kwargs)
        # Hyperband rebuilds a continued model from this before loading its weights.
        kt_utils.save_json(self._get_build_config_fname(trial.trial_id), model.get_build_config())
        # Final-epoch weights: what was scored, and what Hyperband continues from.
        model.save_weights(self._get_checkpoint_fname(trial.trial_id))
        point = divergence(history)
        if point is not None:
            # Its val scores are those of NaN weights (on MNIST 10 %: every image a 0),
            # no measure of the configuration: the worst score instead, and where it broke.
            metrics = {OBJECTIVE.name: DIVERGED_SCORE, "diverged": 1.0}
            for name, value in zip(results.DIVERGED_METRICS[1:], point, strict=True):
                if value is not None:
                    metrics[name] = float(value)
        else:
            metrics = final_metrics(history.history)
            if OBJECTIVE.name not in metrics:  # no validation in the history
                x_val, y_val = kwargs["validation_data"][:2]
                scores = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
                metrics.update(final_metrics({f"val_{k}": [v] for k, v in scores.items()}))
        metrics["epochs_trained"] = float(len(history.history.get("loss", [])))
        del model, history
        keras.backend.clear_session()
        gc.collect()
        metrics["wall_time_s"] = time.perf_counter() - start
        metrics["rss_mb"] = resident_memory_mb()
        return metrics

    def pre_create_trial(self):
        # An IDLE answer (nothing to hand out yet) is retried right away by
        # keras-tuner; back off so a waiting worker does not spin.
        if self._idle_polls:
            time.sleep(min(1.0, 0.05 * 2**self._idle_polls))
        self._idle_polls += 1

    def on_trial_begin(self, trial):
        self._idle_polls = 0
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)  # the oracle and this tuner are saved here
        # After the last trial (the oracle's max_trials reached) there is none to free
        # memory for: a restart would only import everything again to write the outputs.
        remaining = getattr(self.oracle, "remaining_trials", None)
        if callable(remaining) and remaining() == 0:
            return
        grown = resident_memory_mb() - self.rss_start_mb
        if self.recycle_mb and grown > self.recycle_mb:
            raise RecycleProcess(f"resident memory grew {grown:.0f} MB since the search started")


def final_metrics(logs: dict) -> dict:
    """Last-epoch value of every metric in a Keras `History.history` dict, where finite.

    A non-finite value is left out (an empty cell in `trials.csv`): keras-tuner would
    store NaN and warn `All-NaN axis encountered` at every update of that metric.
    """
    last = {key: float(values[-1]) for key, values in logs.items() if values}
    return {key: value for key, value in last.items() if math.isfinite(value)}


def divergence(history) -> tuple[int | None, int | None] | None:
    """Where a trial diverged: `(epoch, step)` where its training loss turned non-finite,
    as `SpaceHyperModel.fit`'s `DivergenceGuard` saw it (1-based, the model's epoch), or
    `(epoch, None)` from the history alone; None if it did not diverge.

    A final validation loss that is not finite counts too (the epoch's last update broke
    the weights: an epoch of one step never shows it in a training loss).
    """
    point = getattr(history, "diverged_at", None)
    if point is not None:
        return tuple(point)
    logs = history.history
    losses = logs.get("loss", [])
    # Keras' epoch indices (from 0, from `initial_epoch` in a Hyperband continuation)
    epochs = list(getattr(history, "epoch", None) or range(len(losses)))
    for index, loss in zip(epochs, losses, strict=False):
        if not math.isfinite(float(loss)):
            return (index + 1, None)
    val = logs.get("val_loss") or []
    if epochs and val and not math.isfinite(float(val[-1])):
        return (epochs[-1] + 1, None)
    return None


class GridTuner(SearchTuner):
    """`SearchTuner` that tries the space's configurations in turn (`GridOracle`),
    maximising `val_accuracy`; `max_trials` None stops only at the end of the grid."""

    def __init__(self, hypermodel, max_trials=None, seed=None, **kwargs):
        oracle = GridOracle(objective=OBJECTIVE, max_trials=max_trials, seed=seed)
        super().__init__(oracle, hypermodel, **kwargs)


class RandomTuner(SearchTuner):
    """`SearchTuner` that samples `max_trials` configurations at random (`RandomOracle`),
    maximising `val_accuracy`."""

    def __init__(self, hypermodel, max_trials=10, seed=None, **kwargs):
        oracle = RandomOracle(objective=OBJECTIVE, max_trials=max_trials, seed=seed)
        super().__init__(oracle, hypermodel, **kwargs)


class BayesianTuner(SearchTuner):
    """`SearchTuner` with Gaussian-process Bayesian optimisation (`BayesianOracle`) over
    `max_trials` trials, maximising `val_accuracy`."""

    def __init__(self, hypermodel, max_trials=10, seed=None, **kwargs):
        oracle = BayesianOracle(objective=OBJECTIVE, max_trials=max_trials, seed=seed)
        super().__init__(oracle, hypermodel, **kwargs)


class HyperbandTuner(kt.Hyperband, SearchTuner):
    """keras-tuner's Hyperband (epochs per round, continuation from checkpoints)."""

    def __init__(
        self, hypermodel, max_epochs=15, factor=3, hyperband_iterations=1, max_trials=None,
        seed=None, **kwargs,
    ):  # fmt: skip
        # kt.Hyperband.__init__ only builds keras-tuner's oracle; ours replaces it.
        oracle = HyperbandOracle(
            objective=OBJECTIVE,
            max_epochs=max_epochs,
            factor=factor,
            hyperband_iterations=hyperband_iterations,
            seed=seed,
            max_trials=max_trials,
        )
        SearchTuner.__init__(self, oracle, hypermodel, **kwargs)

    def _build_hypermodel(self, hp):
        """keras-tuner's continuation, with the optimizer built before the weights load.

        The checkpoint (`model.save_weights`) holds the optimizer's state too: Adam's
        moments and its step count. Keras loads that state only into a built optimizer;
        keras-tuner's Hyperband loads into an unbuilt one, which Keras skips with a
        `Skipping variable loading for optimizer` warning, so every continued trial
        restarted Adam (or momentum) from zero.
        """
        model = super(kt.Hyperband, self)._build_hypermodel(hp)  # not kt.Hyperband's
        if "tuner/trial_id" in hp.values:
            trial_id = hp.values["tuner/trial_id"]
            model.build_from_config(kt_utils.load_json(self._get_build_config_fname(trial_id)))
            if getattr(model, "optimizer", None) is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            model.load_weights(self._get_checkpoint_fname(trial_id))
        return model


TUNERS = {
    "hyperband": HyperbandTuner,
    "grid": GridTuner,
    "random": RandomTuner,
    "bayesian": BayesianTuner,
}
