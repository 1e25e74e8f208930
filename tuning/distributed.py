"""keras-tuner's chief/worker mode: serve the oracle, start a local cluster.

A process whose `KERASTUNER_TUNER_ID` contains `chief` serves the oracle over
gRPC (`serve_oracle`) and writes the outputs when every worker is done; the
others run trials against it. `launch_local_cluster` (`--workers N`) starts a
chief and N workers on 127.0.0.1, each as `python -m tuning CONFIG_JSON`
(`child_main`), and waits for them.
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

from kmnist_lab import runs
from kmnist_lab.errors import KmnistLabError
from tuning.search import ROOT, SearchConfig, SearchError, SearchResult, _lock_project, run_search

log = logging.getLogger(__name__)

POLL_S = 0.2
CWD_VARIABLE = "KMNIST_TUNING_CWD"
WAIT_FOR_WORKERS_S = 120.0


def serve_oracle(tuner, expect_workers: int = 0, poll_s: float = POLL_S) -> None:
    """Serves `tuner.oracle` to workers over gRPC until the search is over.

    keras-tuner's own chief loop (`oracle_chief.start_server`) with its servicer;
    it polls every `poll_s` (keras-tuner sleeps 20 s between checks) and, with
    `expect_workers`, answers IDLE until that many workers have asked for a trial.
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
            self.deadline = time.monotonic() + WAIT_FOR_WORKERS_S

        def CreateTrial(self, request, context):  # noqa: N802 (gRPC method name)
            self.seen.add(request.tuner_id)
            if len(self.seen) < expect_workers and time.monotonic() < self.deadline:
                idle = trial_module.Trial(self.oracle.get_space(), status="IDLE")
                return protos.get_service().CreateTrialResponse(trial=idle.to_proto())
            return super().CreateTrial(request, context)

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
        while not (servicer.stop_triggered and oracle_chief.exit_chief(tuner.oracle)):
            time.sleep(poll_s)
    finally:
        server.stop(grace=2)
    log.info("chief: every worker is done")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local_cluster(cfg: SearchConfig) -> SearchResult:
    """Starts a chief and `cfg.workers` workers on 127.0.0.1, waits, returns the summary.

    Each process runs `python -m tuning CONFIG` with keras-tuner's
    variables set, moves to this process's working folder (so relative paths
    mean the same) and logs to `<search folder>/logs/<tuner id>.log`. If a
    worker fails, the others are stopped; re-running resumes.
    """
    lock = _lock_project(cfg)
    project = cfg.project_dir
    logs = project / "logs"
    logs.mkdir(exist_ok=True)
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
        log.info("started chief and %d workers (logs in %s)", cfg.workers, logs)
        while True:
            codes = {name: p.poll() for name, p in procs.items()}
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
    if CWD_VARIABLE in os.environ:  # the folder of the command that started this process
        os.chdir(os.environ[CWD_VARIABLE])
    try:
        run_search(SearchConfig.from_json(argv[0]))
    except KmnistLabError as e:
        print(f"{os.environ.get('KERASTUNER_TUNER_ID', 'search')}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return 0
