"""Shared command-line plumbing for the scripts (not part of the library).

- `select_backend(argv, auto)`: reads `--backend` (or picks the fastest measured
  backend for `--arch`) before Keras is imported and sets `KERAS_BACKEND` (the
  environment variable works too).
- `Parser`: argparse whose errors are one line on stderr with exit code 2.
- `run(main_fn)`: turns kmnist_lab's user errors into one line + exit code 2
  (3 for divergence), never a traceback.
- `report_logs(quiet)`: a report's warnings on stderr, or none of them for `-q`.
- argparse `type=` helpers that reject zero, negatives, NaN and non-numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch")

# Scripts run from a checkout without installation too.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import _native_logs  # noqa: E402  (scripts/, next to this module)


def _flag_value(argv, flag):
    """The value of the last `--flag X` / `--flag=X` in argv, or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _config_value(argv, key: str):
    """`key` of the `--config JSON` on the command line (a run's config.json or a bare
    config), read before Keras is imported; None without one."""
    if not _flag_value(argv, "--config"):
        return None
    try:
        saved = json.loads(Path(_flag_value(argv, "--config")).read_text())
        return (saved.get("config", saved) or {}).get(key)
    except (OSError, ValueError, AttributeError):
        return None  # the parser reports the bad file properly later


def peek_arch(argv) -> str:
    """The architecture a command line will train, read before Keras is imported:
    `--arch`, else the `arch` of `--config JSON`, else TrainConfig's default."""
    from kmnist_lab.config import TrainConfig

    return _flag_value(argv, "--arch") or _config_value(argv, "arch") or TrainConfig.arch


def select_backend(argv, auto: bool = False) -> str:
    """Sets `KERAS_BACKEND` before Keras loads and returns the backend.

    Order: `--backend X` / `--backend=X` in argv (an explicit `--backend auto` too: a
    flag beats the environment); else the backend a `--config` run's config.json
    records (so a run is re-run as it was); else the KERAS_BACKEND environment
    variable; else, with `auto=True`, the fastest measured
    backend for the command line's `--arch` (`kmnist_lab.config.auto_backend`);
    else TensorFlow (or, where it is not installed, the first installed of JAX and
    torch). When Keras is already loaded (tests, notebooks) its backend
    is kept, and asking for another one fails with a message.
    """
    argv = list(argv if argv is not None else sys.argv[1:])
    backend = _flag_value(argv, "--backend")
    if backend is None:
        recorded = _config_value(argv, "backend")
        backend = recorded if recorded in BACKENDS else None
    allowed = (*BACKENDS, "auto") if auto else BACKENDS  # `auto`: train.py's choice only
    if backend is not None and backend not in allowed:
        fail(f"--backend must be one of {', '.join(allowed)}. Received: {backend!r}")
    environment = os.environ.get("KERAS_BACKEND")
    # Keras itself would fail on its first import, with a traceback (its other backends,
    # numpy and openvino, pass here: the commands that cannot use them refuse them).
    if backend is None and environment not in (None, *BACKENDS, "numpy", "openvino"):
        from kmnist_lab.errors import did_you_mean

        fail(
            f"KERAS_BACKEND must be one of {', '.join(BACKENDS)} (or unset). Received: "
            f"KERAS_BACKEND={environment!r}.{did_you_mean(environment.lower(), BACKENDS)}"
        )
    if backend == "auto" or (backend is None and auto and "KERAS_BACKEND" not in os.environ):
        if "keras" in sys.modules:
            import keras

            backend = keras.backend.backend()
        else:
            from kmnist_lab.config import auto_backend

            backend = auto_backend(peek_arch(argv))
    elif backend is None and "KERAS_BACKEND" not in os.environ and "keras" not in sys.modules:
        from kmnist_lab.config import installed_backend

        # Keras defaults to TensorFlow by itself; name a backend only where it is missing
        # (KERAS_BACKEND stays unset otherwise, as callers read it as the user's choice).
        fallback = installed_backend("tensorflow")
        backend = fallback if fallback != "tensorflow" else None
    if backend is not None:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND", "tensorflow") != backend:
            import keras

            if keras.backend.backend() != backend:
                fail(
                    f"Keras is already loaded with backend {keras.backend.backend()!r} in this "
                    f"process; run the script in a new process for --backend {backend}"
                )
        os.environ["KERAS_BACKEND"] = backend
    prepare_process()
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def prepare_process() -> None:
    """What a script's process sets up once `KERAS_BACKEND` is settled, before Keras loads.

    TensorFlow's C++ log level defaults to 2 (errors), its start-up lines are filtered
    by that level (`_native_logs`), and on JAX the persistent compilation cache is on
    (`jax_compilation_cache`). `select_backend` calls it; so does each process of a
    `tune.py --workers` search (`python -m tuning`), which starts without the scripts'
    command line.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _native_logs.quiet_tensorflow_start()
    if os.environ.get("KERAS_BACKEND") == "jax":
        jax_compilation_cache()


def jax_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache for this process, unless configured.

    Most of a short run's first epoch is compilation: Keras and the training loop
    compile dozens of small XLA programs (`bn_mlp`: 36), each under JAX's default
    1-second threshold for caching. With every program cached, a later run of the
    same model and shapes loads them instead: `train.py --arch bn_mlp` on 2 CPU cores,
    first epoch 4.05 s -> 0.92 s, whole run 12 s -> 7 s (docs/performance.md). A hit is
    the same executable: JAX keys the cache on the program, the compile options, the
    device and the jax version.

    Sets, unless already set: `JAX_COMPILATION_CACHE_DIR` to
    `$XDG_CACHE_HOME/kmnist_lab/jax` (default `~/.cache/kmnist_lab/jax`) and
    `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` to 0. `JAX_ENABLE_COMPILATION_CACHE=false`
    turns the cache off. Must run before jax is imported (JAX reads these at import).
    With no home directory to resolve (no $HOME, no passwd entry) and no absolute
    $XDG_CACHE_HOME, no folder is chosen and the cache stays off: "~" would otherwise
    be a folder named `~` in the working directory.
    """
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        cache_home = os.environ.get("XDG_CACHE_HOME", "")
        if not os.path.isabs(cache_home):  # unset, or relative (invalid per XDG)
            cache_home = os.path.join(os.path.expanduser("~"), ".cache")
        if not os.path.isabs(cache_home):
            return
        os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(cache_home, "kmnist_lab", "jax")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def fail(message: str, code: int = 2):
    raise SystemExit(_one_line(message, code))


def _one_line(message: str, code: int) -> int:
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "kmnist_lab"
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


class Parser(argparse.ArgumentParser):
    """ArgumentParser printing errors as one line (`prog: error: ... (see --help)`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        # `select_backend` reads --backend, --arch and --config from argv before Keras
        # loads: an abbreviation (`--back torch`) would parse but pick another backend.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _check_value(self, action, value):
        # argparse's "invalid choice" with the closest choice suggested, as the library's
        # own registries do: `--arch bnmlp` -> "Did you mean 'bn_mlp'?".
        if action.choices is not None and value not in action.choices:
            from kmnist_lab.errors import did_you_mean

            hint = did_you_mean(value, action.choices)
            if hint:
                choices = ", ".join(map(repr, action.choices))
                raise argparse.ArgumentError(
                    action, f"invalid choice: {value!r}.{hint} (choose from {choices})"
                )
        super()._check_value(action, value)

    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            from kmnist_lab.errors import did_you_mean

            # `--epoch 2` -> "Did you mean '--epochs'?" (abbreviations are off, see above)
            first = message.split(": ", 1)[1].split()[0].split("=")[0]
            if first.startswith("--"):
                options = [o for o in self._option_string_actions if o.startswith("--")]
                hint = did_you_mean(first, options)
                message += f".{hint}" if hint else ""
        elif message.startswith("the following arguments are required: "):
            # `tune.py` alone -> "... required: --space (one of: a_grid, mlp, ...)"
            named = message.split(": ", 1)[1].split(", ")
            choices = [
                f"{name} one of: {', '.join(map(str, action.choices))}"
                for name in named
                for action in [self._option_string_actions.get(name)]
                if action is not None and action.choices is not None
            ]
            message += f" ({'; '.join(choices)})" if choices else ""
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _number(text: str, rule: str, fits) -> float:
    """`text` as a float for which `fits` holds, else "must be RULE, got TEXT" (the
    same message for text, NaN, inf and an out-of-range number)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not fits(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    return _number(text, "a positive finite number", lambda v: v > 0)


def nonneg_float(text: str) -> float:
    return _number(text, "a finite number >= 0", lambda v: v >= 0)


def fraction(text: str) -> float:
    return _number(text, "a number in (0, 1)", lambda v: 0 < v < 1)


def key_value(text: str) -> tuple[str, object]:
    """`KEY=VALUE` with VALUE parsed as JSON when it can be (numbers, lists, true/false)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"must look like KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{key} must be finite, got {raw!r}")
    return key.strip().replace("-", "_"), value


def setup_logging(verbose: bool = True) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        stream=sys.stderr,
    )
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "jax"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@contextlib.contextmanager
def report_logs(quiet: bool):
    """Writes a report with its warnings (an unfinished study, damaged files) on stderr,
    or with `quiet` none of them: they are in the report too, and `-q` prints nothing
    but errors of the report (report.py, study.py --report). The level of kmnist_lab's
    logger is restored afterwards."""
    logger = logging.getLogger("kmnist_lab")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run(main_fn, argv=None, resumable: bool = True) -> int:
    """Calls `main_fn(argv)`; user errors become one stderr line and exit code 2 (or 3).

    A Ctrl-C exits 130 with one line, which tells how to resume when the command
    resumes (`resumable`: train, study, tune) and just says "interrupted" otherwise;
    so does one whose KeyboardInterrupt Python dropped (`kmnist_lab.interrupts`). A
    SIGTERM (`kill`, `timeout`, a scheduler) stops the command the same way and exits
    143 (128 + 15, as the signal would).
    """
    from kmnist_lab import interrupts
    from kmnist_lab.errors import KmnistLabError

    # Records a Ctrl-C even where Python drops its KeyboardInterrupt (kmnist_lab.interrupts).
    installed = interrupts.install()
    try:
        code = main_fn(argv)
        if installed and interrupts.received():
            # A Ctrl-C whose KeyboardInterrupt Python dropped (in a callback) outside
            # training, which stops at it: the command was interrupted all the same.
            raise interrupts.interruption()
        return code
    except SystemExit as e:  # argparse: --help (0) or a one-line usage error (2)
        if e.code is None:  # a bare sys.exit() is success, as in Python itself
            return 0
        return e.code if isinstance(e.code, int) else 2
    except KmnistLabError as e:
        return _one_line(
            str(e).splitlines()[0] if str(e) else type(e).__name__, getattr(e, "exit_code", 2)
        )
    except KeyboardInterrupt as e:
        terminated = isinstance(e, interrupts.Terminated)
        text = "terminated (SIGTERM)" if terminated else "interrupted"
        text += "; re-run the same command to resume" if resumable else ""
        return _one_line(text, 143 if terminated else 130)
    finally:
        if installed:
            interrupts.uninstall()
