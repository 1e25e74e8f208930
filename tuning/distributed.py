"""keras-tuner's chief/worker mode: serve the oracle, start a local cluster.

A process whose `KERASTUNER_TUNER_ID` contains `chief` serves the oracle over
gRPC (`serve_oracle`) and writes the outputs when every worker is done; the
others run trials against it. `launch_local_cluster` (`--workers N`) starts a
chief and N workers on 127.0.0.1, each as `python -m tuning CONFIG_JSON`
(`child_main`), and waits for them, printing a line as each trial ends
(`TrialProgress`, read from the files keras-tuner writes in the search folder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from kmnist_lab import runs
from kmnist_lab.errors import KmnistLabError
from tuning.results import trial_order
from tuning.search import ROOT, SearchConfig, SearchError, SearchResult, _lock_project, run_search

log = logging.getLogger(__name__)

POLL_S = 0.2
CWD_VARIABLE = "KMNIST_TUNING_CWD"
WAIT_FOR_WORKERS_S = 120.0
# How long the chief keeps serving, once the search is over, for a worker that asked
# before but has not yet been told to stop (it would wait on a server that is gone).
STOP_GRACE_S = 60.0
# keras-tuner's statuses of a trial that has ended (results.py counts FAILED and INVALID
# as failed).
FINISHED = ("COMPLETED", "FAILED", "INVALID")
# The objective of every search (`tuning.tuners.OBJECTIVE`), named without importing it.
OBJECTIVE_NAME = "val_accuracy"


def serve_oracle(tuner, expect_workers: int = 0, poll_s: float = POLL_S) -> None:
    """Serves `tuner.oracle` to workers over gRPC until the search is over.

    keras-tuner's own chief loop (`oracle_chief.start_server`) with its servicer;
    it polls every `poll_s` (keras-tuner sleeps 20 s between checks) and, with
    `expect_workers`, answers IDLE until that many workers have asked for a trial.

    It stops once the search is over and every worker that asked has been answered
    STOPPED (or `STOP_GRACE_S` later). keras-tuner's own test, no trial running and
    no worker registered, misses a worker answered IDLE while the others gathered:
    the oracle never registered it, so the chief stopped while it still polled, and
    a `--workers 2` search re-run after its last trial hung (that worker waits on the
    gone server for keras-tuner's 60-minute client timeout).
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief
    from keras_tuner.src.engine import trial as trial_module

    class Servicer(oracle_chief.OracleServicer):
        def __init__(self, oracle):
            super().__init__(oracle)
            self.seen = set()
            self.stopped = set()
            self.deadline = time.monotonic() + WAIT_FOR_WORKERS_S
            self.over_since = None

        def CreateTrial(self, request, context):  # noqa: N802 (gRPC method name)
            self.seen.add(request.tuner_id)
            if len(self.seen) < expect_workers and time.monotonic() < self.deadline:
                idle = trial_module.Trial(self.oracle.get_space(), status="IDLE")
                return protos.get_service().CreateTrialResponse(trial=idle.to_proto())
            response = super().CreateTrial(request, context)
            trial = trial_module.Trial.from_proto(response.trial)
            if trial.status == trial_module.TrialStatus.STOPPED:
                self.stopped.add(request.tuner_id)
            return response

        def done(self) -> bool:
            if not (self.stop_triggered and oracle_chief.exit_chief(self.oracle)):
                return False
            if self.seen <= self.stopped:
                return True
            self.over_since = self.over_since or time.monotonic()
            return time.monotonic() - self.over_since > STOP_GRACE_S

    tuner.save()
    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = Servicer(tuner.oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if not server.add_insecure_port(address):
        raise SearchError(f"chief cannot listen on {address} (port in use?)")
    server.start()
    log.info("chief: oracle serving on %s", address)
    try:
        while not servicer.done():
            time.sleep(poll_s)
    finally:
        server.stop(grace=2)
    log.info("chief: every worker is done")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected_trials(cfg: SearchConfig) -> int | None:
    """How many trials `cfg`'s search runs in all, where that is known before it runs.

    grid: its cells, at most `max_trials`; random and Bayesian: `max_trials`
    (default 10), at most the configurations of a finite space (they are drawn
    without replacement). None for Hyperband (its brackets decide, a finite space
    can run out first, and `max_trials` only caps it) and for a grid without
    `max_trials` over a continuous space.
    """
    if cfg.tuner == "hyperband":
        return None
    import keras_tuner as kt

    from tuning.hypermodels import get_hypermodel
    from tuning.tuners import enumerate_space

    cfg = cfg.resolved()
    hp = kt.HyperParameters()
    get_hypermodel(cfg.space, max_epochs=cfg.max_epochs).declare_hyperparameters(hp)
    cells = enumerate_space(hp)
    cap = cfg.max_trials if cfg.tuner == "grid" else (cfg.max_trials or 10)
    known = [n for n in (cap, None if cells is None else len(cells)) if n is not None]
    return min(known) if known else None


class TrialProgress:
    """Follows the trials of a running search from what its folder records.

    The chief's oracle writes `trial_<id>/trial.json` (status, score) when a trial
    starts and when it ends, and `oracle.json` (with the worker of each trial,
    `kmnist_workers`). `poll()` lists the `trial_*` folders and reads only the
    `trial.json` of new or unfinished trials, and of those only when the file
    changed (a finished trial's is read once); a file that is missing, being
    written or unreadable is read again at the next poll. `oracle.json` is read
    only when a trial has ended.

    Args:
        project: the search folder.
        total: the search's number of trials, None when unknown (`expected_trials`).
    """

    def __init__(self, project, total: int | None = None):
        self.project = Path(project)
        self.total = total
        self.finished: dict[str, dict] = {}  # trial id -> what `poll` returned for it
        self._unfinished: dict[str, tuple] = {}  # folder -> (mtime_ns, size) when last read

    @property
    def best(self) -> float | None:
        """The best score of the finished trials (None before the first)."""
        return max((t["score"] for t in self.finished.values() if t["score"] is not None),
                   default=None)  # fmt: skip

    def poll(self) -> list[dict]:
        """The trials that ended since the last poll, in trial order.

        Each is a dict: `trial_id`, `status`, `score` (None if none), `worker` (None
        if unknown), `done` (trials finished up to this one) and `best` (the best
        score up to this one).
        """
        try:
            folders = [e for e in os.scandir(self.project) if e.name.startswith("trial_")]
        except OSError:
            return []
        new = [t for t in map(self._read, folders) if t is not None]
        if not new:
            return []
        workers = (runs.read_json(self.project / "oracle.json") or {}).get("kmnist_workers")
        workers = workers if isinstance(workers, dict) else {}
        new.sort(key=lambda t: trial_order(t["trial_id"]))
        for trial in new:
            trial["worker"] = workers.get(trial["trial_id"])
            self.finished[trial["trial_id"]] = trial
            trial.update(done=len(self.finished), best=self.best)
        return new

    def _read(self, entry) -> dict | None:
        """The trial in folder `entry` if it has ended and is not reported yet, else None."""
        if entry.name[len("trial_") :] in self.finished:
            return None  # read once, when it ended
        path = os.path.join(entry.path, "trial.json")
        try:
            stat = os.stat(path)
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._unfinished.get(entry.name) == stamp:
            return None  # unchanged since it was read: still running
        data = runs.read_json(path)
        if data is None or not isinstance(data.get("trial_id"), str):
            return None  # being written or unreadable: read it again next time
        if data.get("status") not in FINISHED:
            self._unfinished[entry.name] = stamp
            return None
        self._unfinished.pop(entry.name, None)
        if data["trial_id"] in self.finished:
            return None
        metrics = (data.get("metrics") or {}).get("metrics") or {}
        if data["status"] == "COMPLETED" and "diverged" in metrics:
            # keras-tuner holds it COMPLETED at the worst score (`tuners.SearchTuner`).
            return {"trial_id": data["trial_id"], "status": "DIVERGED", "score": None}
        score = data.get("score")
        valid = isinstance(score, (int, float)) and not isinstance(score, bool) and score == score
        return {"trial_id": data["trial_id"], "status": data["status"],
                "score": float(score) if valid else None}  # fmt: skip

    def count(self, done: int) -> str:
        """`3/12 trials` (`3 trials` when the total is unknown)."""
        if self.total is None:
            return f"{done} trial{'' if done == 1 else 's'}"
        return f"{done}/{self.total} trials"

    def line(self, trial: dict) -> str:
        """The progress line of a trial `poll` returned, e.g.
        `trial 03 done on tuner1: val_accuracy 0.9123 (3/12 trials; best 0.9345)`."""
        where = f" on {trial['worker']}" if trial["worker"] else ""
        if trial["status"] == "COMPLETED":
            score = "-" if trial["score"] is None else f"{trial['score']:.4f}"
            what = f"done{where}: {OBJECTIVE_NAME} {score}"
        elif trial["status"] == "DIVERGED":
            what = f"diverged{where} (non-finite loss; ranked last)"
        else:  # FAILED / INVALID: the worker's log says why
            what = f"{trial['status'].lower()}{where}"
            if trial["worker"]:
                what += f", see logs/{trial['worker']}.log"
        best = "" if trial["best"] is None else f"; best {trial['best']:.4f}"
        return f"trial {trial['trial_id']} {what} ({self.count(trial['done'])}{best})"

    def resumed_line(self) -> str | None:
        """What a resumed search had done before, e.g. `resuming: 2/12 trials done
        before; best val_accuracy 0.8560`; None if nothing."""
        if not self.finished:
            return None
        best = "" if self.best is None else f"; best {OBJECTIVE_NAME} {self.best:.4f}"
        return f"resuming: {self.count(len(self.finished))} done before{best}"


def launch_local_cluster(cfg: SearchConfig) -> SearchResult:
    """Starts a chief and `cfg.workers` workers on 127.0.0.1, waits, returns the summary.

    Each process runs `python -m tuning CONFIG` with keras-tuner's
    variables set, moves to this process's working folder (so relative paths
    mean the same) and logs to `<search folder>/logs/<tuner id>.log`. If a
    worker fails, the others are stopped; re-running resumes. With `cfg.verbose`
    (where a one-process search prints keras-tuner's per-trial tables) it prints a
    line on stdout as each trial ends (`TrialProgress`).
    """
    lock = _lock_project(cfg)
    project = cfg.project_dir
    logs = project / "logs"
    logs.mkdir(exist_ok=True)
    progress = None
    if cfg.verbose:
        progress = TrialProgress(project, expected_trials(cfg))
        progress.poll()  # the trials of an earlier run of this search
        resumed = progress.resumed_line()
        if resumed:
            print(resumed, flush=True)
    child = dataclasses.replace(cfg, workers=0, overwrite=False, expect_workers=cfg.workers)
    config_path = logs / "launch.json"
    runs.atomic_write_json(config_path, {"config": child.to_dict()})
    env = dict(os.environ)
    env.update(
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT=str(_free_port()),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
    )
    # The processes start in ROOT (so `-m tuning` is this checkout's), then move to this
    # folder, against which the command's relative paths (--directory, --data-dir) read.
    env[CWD_VARIABLE] = os.getcwd()
    # N processes share the machine's cores.
    threads = str(max(1, (os.cpu_count() or 1) // (cfg.workers + 1)))
    env.setdefault("OMP_NUM_THREADS", threads)
    names = ["chief"] + [f"tuner{i}" for i in range(cfg.workers)]
    procs = {}
    try:
        for name in names:
            with open(logs / f"{name}.log", "a") as out:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "tuning", str(config_path)],
                    env={**env, "KERASTUNER_TUNER_ID": name},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=str(ROOT),
                )
        log.info(
            "started chief and %d worker%s (logs in %s)",
            cfg.workers, "" if cfg.workers == 1 else "s", logs,
        )  # fmt: skip
        while True:
            codes = {name: p.poll() for name, p in procs.items()}
            # After `codes`: a process that has exited wrote its trial files before.
            for trial in progress.poll() if progress else ():
                print(progress.line(trial), flush=True)
            failed = [n for n, c in codes.items() if c not in (None, 0)]
            if failed:
                name = failed[0]
                tail = (logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise SearchError(
                    f"{name} exited with code {codes[name]} ({tail[0] if tail else 'no output'}); "
                    f"see {logs / (name + '.log')}; re-run the same command to resume"
                )
            if all(c == 0 for c in codes.values()):
                break
            time.sleep(0.5)
    finally:
        lock.release()
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    summary_file = project / "summary.json"
    if not summary_file.is_file():
        raise SearchError(
            f"the chief exited without writing {summary_file}; see {logs / 'chief.log'}; "
            "re-run the same command to resume"
        )
    return SearchResult(project, json.loads(summary_file.read_text()))


def child_main(argv) -> int:
    """Entry point of a chief/worker process (`python -m tuning CONFIG_JSON`)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # As the scripts do (scripts/_cli.py `setup_logging`): TensorFlow's Python logger
    # (e.g. "Assets written to: .../saved_model.tmp/assets") and other libraries'
    # INFO lines stay out of the logs.
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "jax"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if CWD_VARIABLE in os.environ:  # the folder of the command that started this process
        os.chdir(os.environ[CWD_VARIABLE])
    try:
        run_search(SearchConfig.from_json(argv[0]))
    except KmnistLabError as e:
        print(f"{os.environ.get('KERASTUNER_TUNER_ID', 'search')}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return 0
