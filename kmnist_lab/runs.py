"""Run folders: atomic writes, a lock against concurrent writers, completion markers.

A run folder counts as complete only when `metrics.json` exists; it is written
last. Every JSON/CSV file is written to a temporary name and renamed, so a killed
process never leaves a half-written file behind. `run_status` tells a finished,
diverged, interrupted or running run apart from the folder alone, and
`find_runs` lists every run under a folder with its status (reports and studies
show incomplete runs as such instead of reading half a run).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from kmnist_lab.errors import RunFolderError

try:  # POSIX: the kernel drops the lock when its process dies, even on SIGKILL
    import fcntl
except ImportError:  # pragma: no cover - Windows falls back to the PID file alone
    fcntl = None

COMPLETE_MARKER = "metrics.json"
LOCK_NAME = ".lock"
STATUS_FILE = "status.json"
BACKUP_DIR = "backup"
CONFIG_FILE = "config.json"
# What `scripts/report.py FOLDER` writes into a run or search folder
# (`kmnist_lab.report.write_report`; `report.document.FIG_DIR`).
REPORT_FILES = ("report.md", "report.html")
REPORT_FIGURES = "report_files"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import (os.umask can only be read by setting it).
_FILE_MODE = 0o666 & ~_umask()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` via a temporary file in the same folder and a rename.

    The file gets the usual permissions (0666 minus the umask), not `mkstemp`'s 0600.
    A device or pipe that exists (`/dev/null`), and a symbolic link, are written into as
    they are.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file() and not path.is_dir()):
        # A rename over a device, a pipe or a link would replace it (as root, /dev/null
        # by a regular file; `/dev/stdout`, a link, by a file in /dev).
        with open(path, "w") as f:
            f.write(text)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError, AttributeError):
            os.fchmod(fd, _FILE_MODE)
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
    """`atomic_write_text` of `data` as indented JSON and a newline; NumPy values (anything
    with `tolist`) and paths are converted, other non-JSON values raise `TypeError`."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def fsync_dir(path: str | os.PathLike) -> None:
    """Flushes a folder's entries (renames into it) to disk; a no-op where unsupported."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_json(path: str | os.PathLike) -> dict | None:
    """The JSON object in `path`, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(run_dir: str | os.PathLike) -> bool:
    """Whether the run in `run_dir` finished: its `metrics.json` (written last) is a file."""
    return (Path(run_dir) / COMPLETE_MARKER).is_file()


def is_left_by_a_first_write(entry: Path, first_file: str) -> bool:
    """Whether `entry` is nothing a folder's owner wrote: its lock, or the temporary file
    of an `atomic_write_text` of `first_file` (the first file a run or search writes)
    that a kill left behind before its rename."""
    name = entry.name
    return name == LOCK_NAME or (name.startswith(f".{first_file}.") and name.endswith(".tmp"))


def remove_reports(folder: str | os.PathLike) -> None:
    """Deletes the report `scripts/report.py` wrote into a run or search folder.

    The report describes the folder as it was; a run that trains again (resumed or
    `--overwrite`) and a search that `scripts/tune.py` resumes, extends or starts over
    change what it describes, so it goes (re-run `scripts/report.py` for a new one).
    """
    folder = Path(folder)
    for name in REPORT_FILES:
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / REPORT_FIGURES, ignore_errors=True)


def run_status(run_dir: str | os.PathLike) -> str:
    """The state of a run folder, read from the folder alone.

    - `complete`: `metrics.json` exists (written last).
    - `diverged`: training stopped at a non-finite loss (`status.json`).
    - `running`: another live process holds the folder's lock.
    - `incomplete`: anything else in an existing folder (an interrupted run:
      re-running its command resumes it).
    - `missing`: no such folder.
    """
    run_dir = Path(run_dir)
    if is_complete(run_dir):
        return "complete"
    if not run_dir.is_dir():
        return "missing"
    status = (read_json(run_dir / STATUS_FILE) or {}).get("status")
    if status == "diverged":
        return "diverged"
    if lock_owner(run_dir) is not None:
        return "running"
    return "incomplete"


def find_runs(root: str | os.PathLike) -> list[dict]:
    """Every run folder under `root` (itself included), with its status.

    A run folder is one holding `config.json`, `status.json` or `metrics.json`.

    Returns:
        `[{"dir": Path, "name": str, "status": str, "metrics": dict | None}]`,
        sorted by path; `metrics` is None unless the run is complete.
    """
    root = Path(root)
    found = []
    candidates = [root, *sorted(p for p in root.rglob("*") if p.is_dir())] if root.is_dir() else []
    for d in candidates:
        if not any((d / f).is_file() for f in ("config.json", STATUS_FILE, COMPLETE_MARKER)):
            continue
        status = run_status(d)
        metrics = read_json(d / COMPLETE_MARKER) if status == "complete" else None
        found.append({"dir": d, "name": d.name, "status": status, "metrics": metrics})
    return found


# ----------------------------------------------------------------------------- lock


class RunLock:
    """Exclusive lock on a run folder: `<run_dir>/.lock` holding the owner's PID.

    On POSIX the file is also `flock`ed, so the kernel releases the lock when its
    process dies, even on SIGKILL: a killed run never blocks its own resumption,
    and two processes taking over a stale lock at once cannot both win. A lock
    file whose PID still runs (and started when the lock was written) is honoured
    even without `flock` (file systems without it, locks written by other tools).
    Acquiring creates the folder; releasing removes the folders it created when
    they are still empty (a refused or failed run leaves nothing behind). Leaving
    the `with` block on an exception (Ctrl-C included) turns a `status.json` that
    still says `running` into `interrupted`, so that tools reading the file alone
    do not take a dead run for a live one (a SIGKILL leaves `running`; `run_status`
    asks the lock instead).

    Args:
        run_dir: the folder to lock.
        name_flag, dir_flag: the command-line flags that choose the folder's name and
            its parent, named in the refusals (`train.py`'s by default; `tune.py`
            passes `--project-name` and `--directory`).

    Raises:
        RunFolderError: another live process holds the lock, or the folder
            cannot be created or written.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        name_flag: str = "--run-name",
        dir_flag: str = "--output-dir",
    ):
        self.run_dir = Path(run_dir)
        self.name_flag, self.dir_flag = name_flag, dir_flag
        self.path = self.run_dir / LOCK_NAME
        self.held = False
        self._fd: int | None = None
        self._created: Path | None = None

    def acquire(self) -> RunLock:
        self._create_folder()
        try:
            for _ in range(5):
                if self._try_acquire():
                    self.held = True
                    return self
            raise RunFolderError(
                f"could not lock {self.run_dir}; remove {self.path} if no run uses it"
            )
        except BaseException:
            self._remove_created()
            raise

    def _create_folder(self) -> None:
        missing = None
        for parent in (self.run_dir, *self.run_dir.parents):
            if parent.exists():
                break
            missing = parent
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFolderError(
                f"cannot create run folder {self.run_dir}: {e.strerror}; "
                f"choose another {self.dir_flag}"
            ) from None
        if not self.run_dir.is_dir():
            raise RunFolderError(f"{self.run_dir} is not a folder; choose another {self.name_flag}")
        self._created = missing

    def _try_acquire(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFolderError(
                f"cannot write to {self.run_dir}: {e.strerror}; choose another {self.dir_flag}"
            ) from None
        try:
            if fcntl is not None:
                if not _flock_with_retries(fd):
                    self._refuse(_read_owner(self.path)[0])
                # The file may have been unlinked (released) between open and flock.
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    return False
            if not _is_ours(self.path):
                raise RunFolderError(
                    f"{self.path} was not written by kmnist_lab (it does not hold a process "
                    f"ID), so it is left alone; choose another {self.name_flag}"
                )
            pid, started = _read_owner(self.path)
            if pid is not None and pid != os.getpid() and _process_alive(pid, started):
                self._refuse(pid)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()} {_start_time(os.getpid()) or 0}\n".encode())
            self._fd = fd
            return True
        except BaseException:
            if self._fd != fd:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise

    def _refuse(self, pid: int | None):
        who = f"process {pid}" if pid is not None else "another process"
        raise RunFolderError(
            f"{self.run_dir} is in use by {who}; wait for it to finish or choose another "
            f"{self.name_flag}"
        )

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
            self.held = False
            self._remove_created()

    def _remove_created(self) -> None:
        """Removes the folders `acquire` created, innermost first, while they are empty."""
        if self._created is None:
            return
        for folder in (self.run_dir, *self.run_dir.parents):
            try:
                folder.rmdir()
            except OSError:
                break
            if folder == self._created:
                break
        self._created = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and self.held:
                status_file = self.run_dir / STATUS_FILE
                if (read_json(status_file) or {}).get("status") == "running":
                    atomic_write_json(
                        status_file, {"status": "interrupted", "reason": exc_type.__name__}
                    )
        finally:
            self.release()


def _flock_with_retries(fd: int, tries: int = 4) -> bool:
    """Takes the exclusive `flock`, retrying briefly (`lock_owner` probes hold it an instant)."""
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if i + 1 < tries:
                time.sleep(0.05)
    return False


def lock_owner(run_dir: str | os.PathLike) -> int | None:
    """PID of the live process holding `run_dir`'s lock, or None."""
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return None
    pid, started = _read_owner(path)
    if fcntl is not None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return pid if pid is not None else -1  # held, owner unknown
        finally:
            os.close(fd)
    if pid is not None and pid != os.getpid() and _process_alive(pid, started):
        return pid
    return None


def _is_ours(path: Path) -> bool:
    """True when a lock file is empty (just created, or cut short before its PID was
    written) or holds `"PID [START]"` as `RunLock` writes it: another tool's `.lock`
    is neither, and must not be overwritten or deleted."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    return re.fullmatch(r"\s*(\d+(\s+\d+)?\s*)?", text) is not None


def _read_owner(path: Path) -> tuple[int | None, int | None]:
    """`(pid, start_time)` from a lock file (`"PID [START]"`); None where unreadable."""
    try:
        parts = path.read_text().split()
        pid = int(parts[0])
        started = int(parts[1]) if len(parts) > 1 and int(parts[1]) else None
        return pid, started
    except (OSError, ValueError, IndexError):
        return None, None


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to detect PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _process_alive(pid: int, started: int | None = None) -> bool:
    """True when `pid` runs and (when known) is the process that started at `started`."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    if started is not None:
        now = _start_time(pid)
        if now is not None and now != started:
            return False  # the PID was reused by another process
    stat = _proc_state(pid)
    return stat != "Z"  # a zombie has exited


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


# ----------------------------------------------------------------------------- folder


def prepare_run_dir(
    run_dir: str | os.PathLike, overwrite: bool, config: dict, defaults: dict | None = None
) -> bool:
    """Checks a run folder before a run writes to it; returns True when it resumes.

    Call it while holding the folder's `RunLock`. Nothing is deleted here; with
    `overwrite`, the caller then replaces the earlier run's files (training deletes
    them by name), so `overwrite` is honoured for a kmnist_lab run folder only.
    `defaults`: the values of settings that a recorded config may lack because it was
    written before they existed (a run interrupted under an older version).

    - missing or empty: fresh run.
    - interrupted run of the same config with a backup: resumed (returns True),
      with or without `overwrite` (re-running the same command must never lose
      finished epochs; delete the folder to start over).
    - complete (`metrics.json`) or diverged: refused unless `overwrite` (then its
      artifacts are replaced as the new run writes them).
    - interrupted run of another config: refused unless `overwrite`.
    - a folder that is not a run: refused, with or without `overwrite` (it holds
      someone's other files). A run folder holds a `config.json` whose `"config"` is
      an object: training writes it, atomically, before anything else of the run
      (`report.common.run_folder_problem` tells a run folder the same way).

    Raises:
        RunFolderError: the folder holds what this run may not replace, or cannot be
            created or written.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(
            f"cannot create run folder {run_dir}: {e.strerror}; choose another --output-dir"
        ) from None
    if not os.access(run_dir, os.W_OK):
        raise RunFolderError(f"run folder {run_dir} is not writable; choose another --output-dir")
    check_inside_parent(run_dir, "--run-name", "--output-dir")
    entries = [p for p in run_dir.iterdir() if not is_left_by_a_first_write(p, CONFIG_FILE)]
    if not entries:
        return False
    recorded = (read_json(run_dir / CONFIG_FILE) or {}).get("config")
    if not isinstance(recorded, dict):
        raise RunFolderError(
            f"{run_dir} exists and is not a kmnist_lab run folder, and --overwrite replaces "
            "only a run; choose another --run-name or --output-dir"
        )
    if is_complete(run_dir):
        if overwrite:
            return False
        raise RunFolderError(
            f"run folder {run_dir} already holds a finished run; pass --overwrite to replace it "
            "or choose another --run-name"
        )
    status = read_json(run_dir / STATUS_FILE) or {}
    if status.get("status") == "diverged":
        if overwrite:
            return False
        where = (
            f" at epoch {status.get('epoch')}, step {status.get('step')}"
            if "epoch" in status
            else ""
        )
        raise RunFolderError(
            f"run folder {run_dir} holds a run that diverged{where}; pass --overwrite to "
            "retrain it (with a lower --lr) or choose another --run-name"
        )
    old = {**(defaults or {}), **recorded}
    if old.get("backend") is None:  # written before Python runs recorded their backend
        old["backend"] = config.get("backend")
    if _comparable(old) == _comparable(config):
        return (run_dir / BACKUP_DIR).is_dir()
    if overwrite:
        return False
    raise RunFolderError(
        f"run folder {run_dir} holds an interrupted run with a different config "
        f"({_config_changes(old, config)}); pass --overwrite to start over or choose "
        "another --run-name"
    )


def check_inside_parent(folder: str | os.PathLike, name_flag: str, dir_flag: str) -> None:
    """Refuses a folder that resolves to its parent or one of the parent's ancestors.

    Names are checked before (`config.check_folder_name` refuses `.`, `..` and paths);
    this catches a symbolic link that leads back up (`OUT/run -> ..`), whose "run
    folder" would be the folder that holds it.

    Raises:
        RunFolderError: `folder` resolves to its parent or above.
    """
    folder = Path(folder)
    target, parent = folder.resolve(), folder.parent.resolve()
    if target == parent or target in parent.parents:
        raise RunFolderError(
            f"{folder} leads to {target}, which holds it (the folder {dir_flag} names or one "
            f"above it); choose another {name_flag}"
        )


def _config_changes(old, new: dict, limit: int = 4) -> str:
    """`key old -> new` for the settings that differ, e.g. `lr 0.001 -> 0.01`."""
    if not isinstance(old, dict):
        return "its config.json holds no readable config"
    old, new = _comparable(old), _comparable(new)
    keys = [k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k)]
    text = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:limit])
    return text + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _comparable(config: dict) -> dict:
    # `output_dir` names where the folder is, not what trains in it: the folder is the
    # one being checked however its path was written (`runs/`, `./runs`) or if moved.
    ignore = {"overwrite", "verbose", "tensorboard", "output_dir"}
    return {k: v for k, v in config.items() if k not in ignore}
