"""Run folders: atomic writes, a lock against concurrent writers, completion markers.

A run folder counts as complete only when `metrics.json` exists; it is written
last. Every JSON/CSV file is written to a temporary name and renamed, so a killed
process never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from kmnist_lab.errors import RunFolderError

COMPLETE_MARKER = "metrics.json"
LOCK_NAME = ".lock"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` via a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def is_complete(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / COMPLETE_MARKER).is_file()


def run_status(run_dir: str | os.PathLike) -> str:
    """`complete`, `diverged`, `incomplete` or `missing`, read from the folder."""
    run_dir = Path(run_dir)
    if is_complete(run_dir):
        return "complete"
    status_file = run_dir / "status.json"
    if status_file.is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            return json.loads(status_file.read_text()).get("status", "incomplete")
    return "incomplete" if run_dir.is_dir() else "missing"


class RunLock:
    """Exclusive lock file `<run_dir>/.lock` holding the owner's PID.

    A lock whose PID no longer runs is stale and taken over (a killed run must
    not block its own resumption).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = _read_pid(self.path)
                if pid is not None and _pid_alive(pid) and pid != os.getpid():
                    raise RunFolderError(
                        f"{self.path.parent} is in use by process {pid}; wait for it to finish "
                        "or choose another --run-name"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            except OSError as e:
                raise RunFolderError(f"cannot write to {self.path.parent}: {e.strerror}") from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self
        raise RunFolderError(f"could not lock {self.path.parent}; remove {self.path} if no run uses it")

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_run_dir(run_dir: str | os.PathLike, overwrite: bool, config: dict) -> bool:
    """Creates or reuses a run folder; returns True when an interrupted run resumes.

    - missing or empty: created, fresh run.
    - complete (`metrics.json`): refused unless `overwrite` (then its artifacts are
      replaced as the new run writes them).
    - interrupted run of the same config: resumed (returns True).
    - anything else: refused unless `overwrite`.

    Raises:
        RunFolderError: the folder is taken or cannot be written.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create run folder {run_dir}: {e.strerror}") from None
    if not os.access(run_dir, os.W_OK):
        raise RunFolderError(f"run folder {run_dir} is not writable; choose another --output-dir")
    entries = [p for p in run_dir.iterdir() if p.name != LOCK_NAME]
    if not entries or overwrite:
        return False
    if is_complete(run_dir):
        raise RunFolderError(
            f"run folder {run_dir} already holds a finished run; pass --overwrite to replace it "
            "or choose another --run-name"
        )
    previous = run_dir / "config.json"
    if previous.is_file():
        try:
            old = json.loads(previous.read_text()).get("config", {})
        except (OSError, json.JSONDecodeError):
            old = None
        same = old is not None and _comparable(old) == _comparable(config)
        if same and (run_dir / "backup").is_dir():
            return True
        if not same:
            raise RunFolderError(
                f"run folder {run_dir} holds an interrupted run with a different config; "
                "pass --overwrite to start over or choose another --run-name"
            )
        return False
    raise RunFolderError(
        f"{run_dir} exists and is not a kmnist_lab run folder; choose another --run-name "
        "or pass --overwrite"
    )


def _comparable(config: dict) -> dict:
    ignore = {"overwrite", "verbose", "tensorboard"}
    return {k: v for k, v in config.items() if k not in ignore}
