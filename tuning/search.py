"""Run a keras-tuner search: local, resumable, or distributed (chief + workers).

`run_search(SearchConfig(...))` searches `space` with `tuner` on the train split,
scores trials on the validation split, and writes into the search folder
`<directory>/<project_name>/` (keras-tuner's own files live there too):

```
search.json                the search's settings and backend (a re-run with others is refused)
trials.csv                 one row per trial: hyperparameters, val metrics, epochs, time, worker
best_hyperparameters.json  the best trial's hyperparameters and score
best_model/                the best trial's model restored from its checkpoint (or retrained):
                           saved_model/, model.keras, metrics.json (val + test accuracy)
figures/                   heatmap over batch size x lr, Hyperband brackets, epochs spent
summary.md, summary.json   totals (epochs trained, trials, time) and the best trial
logs/                      per-process logs of a distributed search
```

Re-running the same search without `overwrite` resumes it: finished trials are
kept, the interrupted one is run again, and the outputs are rewritten. `overwrite`
empties a search folder (one holding `search.json`) and nothing else. Either way the
report `scripts/report.py` wrote into the folder goes, as it describes the search as
it was. The test
split is used once, by the best model, after the search.

Distributed: keras-tuner's chief/worker mode (`KERASTUNER_TUNER_ID`,
`KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT`). A process whose tuner id
contains `chief` serves the oracle over gRPC and writes the outputs when every
worker is done; the others run trials. `workers=N` starts a chief and N workers on
127.0.0.1 and waits for them (`tuning.distributed`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from kmnist_lab import runs
from kmnist_lab.errors import ConfigError, KmnistLabError, RunFolderError, is_int, is_real

log = logging.getLogger(__name__)

TUNER_NAMES = ("hyperband", "grid", "random", "bayesian")
# Settings that define a search: a resumed search must match them.
IDENTITY = (
    "space", "tuner", "dataset", "data_dir", "val_fraction", "seed", "max_epochs", "factor",
    "hyperband_iterations",
)  # fmt: skip
# Identity settings only Hyperband reads: another tuner ignores them, so they must not
# refuse a resumed grid/random/Bayesian search (`--factor 4 --tuner grid`, re-run without).
HYPERBAND_ONLY = ("factor", "hyperband_iterations")
ROOT = Path(__file__).resolve().parents[1]


class SearchError(KmnistLabError):
    """A search process failed (exit code 1; re-running the command resumes)."""

    exit_code = 1


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything one search needs (validated on construction).

    Attributes:
        space: search space (`tuning.list_spaces()`).
        tuner: `hyperband`, `grid`, `random` or `bayesian`.
        dataset, data_dir, val_fraction, seed: as for training (`seed` also seeds
            the oracle and every trial's initialisation).
        max_epochs: most epochs one model trains. Hyperband's `max_epochs`; for the
            other tuners it drops the space's epoch choices above it. None: the
            space's largest epoch choice.
        factor, hyperband_iterations: Hyperband's reduction factor and sweeps.
        max_trials: most trials (None: grid = whole grid, random/bayesian = 10,
            Hyperband = as its brackets need).
        directory, project_name: the search folder is `directory/project_name`
            (default name `SPACE_TUNER_DATASET`).
        overwrite: start over instead of resuming (empties a search folder only).
        workers: start a chief and this many workers on this machine (0: one process).
        expect_workers: a chief hands out no trial until this many workers asked
            (at most `WAIT_FOR_WORKERS_S`), so every worker gets work.
        jit: XLA policy.
        export: write the best model's SavedModel and model.keras.
        retrain: retrain the best configuration from scratch instead of restoring
            its checkpoint (needed when checkpoints live on other machines).
        recycle_mb: when this process's resident memory has grown by more than
            this since the search started, it re-executes itself between two
            trials (same PID, same command line) and resumes: TensorFlow never
            frees a traced Keras training function. None: never (library
            callers; `scripts/tune.py` sets 300).
        verbose: 0 quiet, 1 keras-tuner's per-trial tables.
    """

    space: str
    tuner: str = "hyperband"
    dataset: str = "auto"
    data_dir: str | None = None
    val_fraction: float | None = None
    seed: int = 0
    max_epochs: int | None = None
    factor: int = 3
    hyperband_iterations: int = 1
    max_trials: int | None = None
    directory: str = "searches"
    project_name: str | None = None
    overwrite: bool = False
    workers: int = 0
    expect_workers: int = 0
    jit: str = "auto"
    export: bool = True
    retrain: bool = False
    recycle_mb: int | None = None
    verbose: int = 1

    def __post_init__(self):
        from kmnist_lab.config import JIT_POLICIES, check_folder_name
        from kmnist_lab.data import list_datasets
        from tuning.hypermodels import SPACES

        SPACES.get(self.space)  # raises ConfigError listing the valid spaces
        if self.tuner not in TUNER_NAMES:
            raise ConfigError(
                f"`tuner` must be one of {', '.join(TUNER_NAMES)}. Received: {self.tuner!r}"
            )
        if self.dataset not in list_datasets():
            raise ConfigError(
                f"`dataset` must be one of {', '.join(list_datasets())}. Received: {self.dataset!r}"
            )
        if self.jit not in JIT_POLICIES:
            raise ConfigError(
                f"`jit` must be one of {', '.join(JIT_POLICIES)}. Received: {self.jit!r}"
            )
        for name, low in (
            ("max_epochs", 1), ("max_trials", 1), ("factor", 2), ("hyperband_iterations", 1),
            ("workers", 0), ("expect_workers", 0), ("recycle_mb", 1), ("seed", 0),
        ):  # fmt: skip
            value = getattr(self, name)
            if value is None and name in ("max_epochs", "max_trials", "recycle_mb"):
                continue
            if not is_int(value) or value < low:
                raise ConfigError(
                    f"`{name}` must be an integer >= {low}. Received: {name}={value!r}"
                )
            object.__setattr__(self, name, int(value))  # a NumPy integer as a Python one
        for name in ("overwrite", "export", "retrain"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"`{name}` must be true or false. Received: {name}={getattr(self, name)!r}"
                )
        if isinstance(self.directory, os.PathLike):
            object.__setattr__(self, "directory", os.fspath(self.directory))
        if not isinstance(self.directory, str) or not self.directory:
            raise ConfigError(
                f"`directory` must be a non-empty string or path. Received: "
                f"directory={self.directory!r}"
            )
        if self.project_name is not None:
            if not isinstance(self.project_name, str):
                raise ConfigError(
                    f"`project_name` must be a string. Received: project_name={self.project_name!r}"
                )
            check_folder_name("project_name", self.project_name, "directory")
        if self.val_fraction is not None and not (
            is_real(self.val_fraction) and 0 < self.val_fraction < 1
        ):
            raise ConfigError(f"`val_fraction` must be in (0, 1). Received: {self.val_fraction!r}")

    def resolved(self) -> SearchConfig:
        """A copy with `max_epochs` and `project_name` filled in."""
        from tuning.hypermodels import SPACES

        changes = {}
        if self.max_epochs is None:
            changes["max_epochs"] = max(SPACES.get(self.space).factory.epoch_choices)
        if self.project_name is None:
            changes["project_name"] = f"{self.space}_{self.tuner}_{self.dataset}"
        return dataclasses.replace(self, **changes)

    @property
    def project_dir(self) -> Path:
        cfg = self.resolved()
        return Path(cfg.directory) / cfg.project_name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        cfg = self.resolved().to_dict()
        return {k: cfg[k] for k in IDENTITY}

    def identity_differences(self, old: dict | None) -> list[str]:
        """The identity settings in which this search differs from `old`, a stored identity.

        Empty when `old` describes this search. Hyperband's own settings count only for
        `tuner="hyperband"`.
        """
        new, old = self.identity(), old or {}
        ignored = () if new["tuner"] == "hyperband" else HYPERBAND_ONLY
        return sorted(k for k in new if k not in ignored and old.get(k) != new[k])

    @classmethod
    def from_json(cls, path) -> SearchConfig:
        data = runs.read_json(path)
        if data is None:
            raise ConfigError(f"cannot read search config {path}: not a readable JSON object")
        data = data.get("config", data)
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclasses.dataclass
class SearchResult:
    """What `run_search` returns: the search folder and `summary.json`'s contents."""

    project_dir: Path
    summary: dict


def distributed_role() -> str | None:
    """`chief`, `worker` or None (not distributed), from keras-tuner's variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if name not in os.environ:
            raise ConfigError(f"KERASTUNER_ORACLE_IP is set but {name} is not; set both or neither")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


# -------------------------------------------------------------------- the folder


def prepare_project_dir(cfg: SearchConfig) -> Path:
    """Creates, resumes or (with `overwrite`) clears the search folder; writes search.json.

    A folder is a search when it holds `search.json` (written here, before anything
    else of the search). `overwrite` empties only such a folder: a folder of other
    files is refused with or without it. A search that goes on (resumed, extended or
    started over) loses the report `scripts/report.py` wrote of it, as it describes
    the search as it was (`runs.remove_reports`).

    Raises:
        RunFolderError: the folder holds a different search or something else.
    """
    project = cfg.project_dir
    marker = project / "search.json"
    if project.is_dir():
        runs.check_inside_parent(project, "--project-name", "--directory")
        others = [p for p in project.iterdir() if not runs.is_left_by_a_first_write(p, marker.name)]
        if others and not _holds_a_search(marker):
            raise RunFolderError(
                f"{project} exists and is not a kmnist_lab search folder, and --overwrite "
                "replaces only a search; choose another --project-name or --directory"
            )
        # A process that `restart` re-executed (same command line, --overwrite included)
        # resumes the search its first start cleared: it must not clear it again.
        if cfg.overwrite and _RESTARTS not in os.environ:
            try:
                _clear(project)
            except OSError as e:  # its search.json is kept: the same command goes on
                raise RunFolderError(
                    f"cannot empty search folder {project} for --overwrite: {e.strerror} "
                    f"({e.filename}); remove that, then re-run the same command"
                ) from None
    try:
        project.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(
            f"cannot create search folder {project}: {e.strerror}; choose another --directory"
        ) from None
    backend = keras_backend()
    if marker.is_file():
        stored = runs.read_json(marker) or {}
        diff = cfg.identity_differences(stored.get("identity"))
        if diff:
            raise RunFolderError(
                f"{project} holds a search with other settings "
                f"({_identity_changes(stored.get('identity'), cfg.identity(), diff)}); pass "
                "--overwrite to start over or choose another --project-name"
            )
        # Trials on two backends are not comparable (another initialisation from the
        # same seed, other kernels): a search resumes on its own backend only. Folders
        # written before the backend was recorded resume on any.
        if stored.get("backend", backend) != backend:
            raise RunFolderError(
                f"{project} holds a search run on the {stored['backend']} backend, and this "
                f"process runs {backend}; pass --backend {stored['backend']} to resume it, "
                "--overwrite to start over or choose another --project-name"
            )
        runs.remove_reports(project)  # the search goes on: its report would be stale
    runs.atomic_write_json(
        marker, {"identity": cfg.identity(), "backend": backend, "config": cfg.to_dict()}
    )
    return project


def _holds_a_search(marker: Path) -> bool:
    """Whether `marker` is the `search.json` this module writes: a JSON object with the
    search's `identity` (another tool's `search.json` is not)."""
    stored = runs.read_json(marker) if marker.is_file() else None
    return isinstance(stored, dict) and isinstance(stored.get("identity"), dict)


def _clear(project: Path) -> None:
    """Deletes everything in the search folder `project` but the folder (which may be a
    link or a mount point) and its lock; `search.json` last, so that a clearing cut
    short (Ctrl-C, a file that cannot be deleted) leaves a search folder, which the
    same command clears again."""
    marker = project / "search.json"
    for entry in project.iterdir():
        if entry.name in (runs.LOCK_NAME, marker.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    marker.unlink(missing_ok=True)


def _identity_changes(old: dict | None, new: dict, keys: list[str]) -> str:
    """`key stored -> asked` for each differing identity setting, e.g. `seed 0 -> 1`.

    Args:
        old: the identity stored in the folder's search.json (None: unreadable).
        new: this search's identity.
        keys: the settings that differ, as `SearchConfig.identity_differences` lists them.
    """
    if not isinstance(old, dict):
        return "its search.json records no settings"
    return ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in keys)


def keras_backend() -> str:
    """The Keras backend of this process (imports Keras)."""
    import keras

    return keras.backend.backend()


# ------------------------------------------------------------------- the search


def make_tuner(cfg: SearchConfig, num_classes: int, train_size: int | None):
    """The keras-tuner `Tuner` for `cfg` (reloads an existing search folder)."""
    import keras_tuner as kt

    from tuning.hypermodels import get_hypermodel
    from tuning.tuners import TUNERS

    cfg = cfg.resolved()
    hypermodel = get_hypermodel(
        cfg.space,
        num_classes=num_classes,
        train_size=train_size,
        tune_epochs=cfg.tuner != "hyperband",
        max_epochs=cfg.max_epochs,
        jit=cfg.jit,
        seed=cfg.seed,
        # A line per epoch inside each trial (not -q), so a long trial shows progress.
        verbose=2 if cfg.verbose else 0,
    )
    kwargs = {"seed": cfg.seed, "directory": cfg.directory, "project_name": cfg.project_name}
    if cfg.tuner == "hyperband":
        kwargs.update(max_epochs=cfg.max_epochs, factor=cfg.factor,
                      hyperband_iterations=cfg.hyperband_iterations)  # fmt: skip
    if cfg.max_trials is not None or cfg.tuner != "grid":
        kwargs["max_trials"] = cfg.max_trials or (None if cfg.tuner == "hyperband" else 10)
    try:  # reloads the folder's keras-tuner state (oracle.json, trials) where it has one
        tuner = TUNERS[cfg.tuner](hypermodel, overwrite=False, recycle_mb=cfg.recycle_mb, **kwargs)
    except KmnistLabError:
        raise
    except (ValueError, KeyError, TypeError) as e:  # a damaged JSON file, or one cut short
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise RunFolderError(
            f"cannot resume the search in {cfg.project_dir}: its "
            f"keras-tuner state (oracle.json, tuner*.json, trial_*/trial.json) is damaged "
            f"({type(e).__name__}: {detail}); pass --overwrite to start it over"
        ) from None
    if isinstance(tuner.oracle, kt.Oracle):  # not a worker's client of the chief
        tuner.oracle.verbose = cfg.verbose
    return tuner


def run_search(config: SearchConfig) -> SearchResult | None:
    """Runs (or resumes) the search `config` describes; see the module docstring.

    Returns:
        The search folder and its summary; None in a worker process.

    Raises:
        ConfigError, DataError, RunFolderError: bad input (nothing is overwritten).
        SearchError: a process of a distributed search failed.
    """
    try:
        return _run_search(config)
    finally:
        # The markers of a restarted process (`restart`) describe this search only: a
        # later search in the process, or a process it starts, is a new one (it skipped
        # `overwrite`'s emptying and reported this one's restarts).
        os.environ.pop(_RESTARTS, None)
        os.environ.pop(_RSS0, None)


def _run_search(config: SearchConfig) -> SearchResult | None:
    from kmnist_lab.data import load_dataset

    cfg = config.resolved()
    role = distributed_role()
    if cfg.workers and role is not None:
        raise ConfigError("--workers starts its own chief and workers; unset KERASTUNER_* first")
    # Load (and so validate) the data before touching the search folder: a bad
    # --data-dir must leave nothing behind that would refuse the corrected command.
    dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.val_fraction, cfg.seed)
    if cfg.dataset == "auto":
        # Name the folder and the search's identity after what "auto" found, so a later
        # run that finds another dataset starts its own search instead of mixing them.
        cfg = dataclasses.replace(config, dataset=dataset.name).resolved()
    if cfg.workers:
        from tuning.distributed import launch_local_cluster

        return launch_local_cluster(cfg)  # the chief and workers load it again
    lock = None
    if role is None:
        lock = _lock_project(cfg)
    elif role == "chief":
        prepare_project_dir(cfg)
    try:
        return _search(cfg, role, dataset)
    finally:
        if lock is not None:
            lock.release()


def one_bracket_note(cfg: SearchConfig) -> str | None:
    """What a Hyperband search with `max_epochs < factor` does, or None.

    keras-tuner's Hyperband has `1 + floor(log_factor(max_epochs))` brackets; below the
    factor that is one, whose `ceil(1 + log_factor(max_epochs))` models all train
    `max_epochs` epochs: a random search of 1 or 2 models, no successive halving.
    """
    if cfg.tuner != "hyperband" or cfg.max_epochs >= cfg.factor:
        return None
    import math

    models = math.ceil(1 + math.log(cfg.max_epochs, cfg.factor))
    per = " per --hyperband-iterations" if cfg.hyperband_iterations > 1 else ""
    return (
        f"Hyperband with --max-epochs {cfg.max_epochs} below --factor {cfg.factor} has one "
        f"bracket: it trains {models} model{'s' if models > 1 else ''} for "
        f"{cfg.max_epochs} epoch{'s' if cfg.max_epochs > 1 else ''}{per}, without successive "
        f"halving. Pass --max-epochs {cfg.factor} or more, or --tuner random --max-trials N"
    )


def _lock_project(cfg: SearchConfig):
    """Prepares the search folder and locks it against a second local search."""
    if cfg.project_dir.is_dir():  # refuse before `overwrite` deletes a running search
        _project_lock(cfg).acquire().release()
    prepare_project_dir(cfg)
    return _project_lock(cfg).acquire()


def _project_lock(cfg: SearchConfig) -> runs.RunLock:
    """The search folder's lock; its refusals name tune.py's flags."""
    return runs.RunLock(cfg.project_dir, name_flag="--project-name", dir_flag="--directory")


def _search(cfg: SearchConfig, role: str | None, dataset) -> SearchResult | None:
    from tuning.tuners import RecycleProcess, peak_memory_mb, resident_memory_mb

    start = time.perf_counter()
    log.info("%s", dataset.summary())
    note = one_bracket_note(cfg) if role in (None, "chief") else None  # once: by the planner
    if note:
        log.warning("%s", note)
    (x_train, y_train), (x_val, y_val) = dataset.train, dataset.val
    if len(y_val) == 0:
        raise ConfigError("the search needs a validation split; the dataset's is empty")
    tuner = make_tuner(cfg, dataset.num_classes, len(y_train))
    # The trials of an earlier process, reloaded (a worker's oracle is the chief's client).
    trials_before = len(tuner.oracle.trials) if role is None else None
    # A restarted process reports against the first start (same PID, see `restart`).
    memory = {"before_search_mb": float(os.environ.get(_RSS0, resident_memory_mb()))}
    if role == "chief":
        from tuning.distributed import serve_oracle

        serve_oracle(tuner, expect_workers=cfg.expect_workers)
    else:
        from kmnist_lab.callbacks import InterruptCheck

        # A Ctrl-C that Keras swallows mid-trial (see InterruptCheck) still stops the
        # search; the hypermodel adds the check to every trial's callbacks.
        with InterruptCheck() as interrupts:
            tuner.hypermodel.interrupts = interrupts
            try:
                tuner.search(x_train, y_train, validation_data=(x_val, y_val))
            except RecycleProcess as e:
                restart(str(e), memory["before_search_mb"])
            finally:
                tuner.hypermodel.interrupts = None
    memory["after_search_mb"] = resident_memory_mb()
    memory["peak_mb"] = peak_memory_mb()  # kept across restarts (same process)
    memory["peak_growth_mb"] = memory["peak_mb"] - memory["before_search_mb"]
    memory["restarts"] = int(os.environ.get(_RESTARTS, 0))
    if role is None and memory["restarts"] == 0 and len(tuner.oracle.trials) == trials_before:
        # A re-run of a finished search trains nothing: keep the memory of the process
        # that ran the trials (its peak and restarts), not this one's.
        earlier = (runs.read_json(cfg.project_dir / "summary.json") or {}).get("session_memory_mb")
        if earlier:
            memory = {**earlier, "kept_from_an_earlier_process": True}
    if role == "worker":
        log.info("worker %s: no trial left; %s", tuner.tuner_id, memory_text(memory))
        return None
    from tuning.finalize import finalize

    summary = finalize(tuner, cfg, dataset, elapsed_s=time.perf_counter() - start, memory=memory)
    return SearchResult(cfg.project_dir, summary)


def memory_text(memory: dict) -> str:
    """A process's memory over a search, for a log line: `memory peak 1098 MB (+227 MB
    during the search)`, then `, 1 process restart` when it restarted (`restart`)."""
    text = (
        f"memory peak {memory['peak_mb']:.0f} MB"
        f" ({memory['peak_mb'] - memory['before_search_mb']:+.0f} MB during the search)"
    )
    restarts = memory.get("restarts", 0)
    if restarts:
        text += f", {restarts} process restart{'' if restarts == 1 else 's'}"
    return text


_RSS0 = "KMNIST_TUNING_RSS0_MB"
_RESTARTS = "KMNIST_TUNING_RESTARTS"


def restart(reason: str, rss0_mb: float) -> None:
    """Re-executes this process with its own command line (same PID); never returns.

    Every trial has ended and been saved, so the new process resumes the search
    where this one stopped, with the memory TensorFlow would not give back.
    """
    restarts = int(os.environ.get(_RESTARTS, 0)) + 1
    log.info(
        "%s: restarting the process to free it (restart %d); the search resumes", reason, restarts
    )
    os.environ[_RESTARTS] = str(restarts)
    os.environ[_RSS0] = str(rss0_mb)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    os.execv(sys.executable, [sys.executable, *argv[1:]])
