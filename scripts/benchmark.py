#!/usr/bin/env python3
"""Benchmark training/inference throughput, compile time and memory; compare with PyTorch.

Examples:
  python scripts/benchmark.py --arch bn_mlp --arch relu_mlp --arch residual_cnn --arch resnet18 --compare-torch
  python scripts/benchmark.py --arch bn_mlp --batch-size 1024 --compare-torch
  python scripts/benchmark.py --arch bn_mlp --jit on off --steps-per-execution 1 10 50 --backend tensorflow jax
  python scripts/benchmark.py --arch resnet18 --quick    # does it run? (not a measurement)

Each measurement runs in its own subprocess (clean memory peak, no shared compile
caches). With --compare-torch the PyTorch eager reference of the same model
(scripts/torch_reference.py, a copy of the project's shared reference, or
--torch-reference PATH) runs right after
each of ours, interleaved, and the table shows our/torch ratios of the medians over
--repeats. The NumPy fp32 matmul rate is measured in the same run (best of 3
timings, at the start and again at the end; the higher reading counts, and a lower
one more than 20 % below it is reported), and the table shows the share of it that
each training run reaches, ours and torch's ("%mm"):
samples/s x the model's Dense and Conv2D FLOPs per training sample
(2 x (3 x forward multiply-adds - the first layer's): 2.01 MFLOP for the MLPs,
11.6 MFLOP for residual_cnn, 733 MFLOP for resnet18). At batch 128 the table also
shows the project's speed target (our/torch ratio) and the share of the matmul rate
that meeting it would take ("needs %mm" = torch's share x target).

Columns: train/s, torch/s: training samples/s (steady state, medians); input: how
batches reach the model (device: the compiled loop over data held on the device;
iterator: Keras' own); jit: the --jit policy, XLA: what it chose; spe: steps per
compiled call; sh (shards): --batch-shards; compile s: the warm-up epoch's time
beyond its steady-state share (tracing and compiling, validation included); epoch
s: one 60-step epoch (7,680 images at batch 128, not a dataset's 55k) plus
validation on a sixth as many images; infer/s:
`predict` at batch 1024; peak RSS MB: the worker process's peak resident memory.
A failed measurement stops the run; the table and --json keep what was measured
before it (the JSON's "failed" names the error), and the command exits 2.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import _cli

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TORCH_REFERENCE = ROOT / "scripts" / "torch_reference.py"
MLPS = ("plain_mlp", "relu_mlp", "bn_mlp", "mlp")
# Issue 7's targets: our/torch training throughput at batch 128 on the 2-core CPU.
TORCH_RATIO_TARGETS = {"bn_mlp": 1.6, "relu_mlp": 1.6, "residual_cnn": 1.4, "resnet18": 1.15}
# The fields every row of a --json file needs for its table (--from-json).
TABLE_KEYS = ("arch", "backend", "jit", "jit_compile", "steps_per_execution",
              "train_samples_per_s", "torch_samples_per_s", "ratio_vs_torch", "compile_s",
              "epoch_s", "infer_samples_per_s", "peak_rss_mb", "matmul_share")  # fmt: skip


def build_parser():
    from kmnist_lab.config import INPUT_PIPELINES, JIT_POLICIES, PRECISIONS
    from kmnist_lab.names import ARCHS

    p = _cli.Parser(prog="benchmark.py", description=__doc__)
    p.add_argument("--arch", action="extend", nargs="+", choices=ARCHS, metavar="ARCH",
                   help=f"architecture(s): {', '.join(ARCHS)} (several after one --arch, or "
                   "--arch repeated; default bn_mlp)")  # fmt: skip
    p.add_argument("--batch-size", type=_cli.positive_int, default=128,
                   help="training batch size (default 128, the targets' size; inference: 1024)")  # fmt: skip
    p.add_argument("--backend", nargs="+", choices=(*_cli.BACKENDS, "auto"), default=None,
                   help="Keras backend(s) (default auto: KERAS_BACKEND if set, else the "
                        "fastest measured per arch, as scripts/train.py picks)")  # fmt: skip
    p.add_argument(
        "--jit",
        nargs="+",
        choices=JIT_POLICIES,
        default=["auto"],
        help="compile policy(ies) (default auto: the one scripts/train.py uses)",
    )
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="float32 (default) or mixed (bfloat16 compute)")  # fmt: skip
    p.add_argument("--input-pipeline", nargs="+", choices=INPUT_PIPELINES, default=["auto"],
                   help="how batches reach the model (default auto: device on JAX, and on "
                        "TensorFlow without a GPU; Keras' iterator otherwise; see "
                        "docs/performance.md)")  # fmt: skip
    p.add_argument("--steps-per-execution", nargs="+", type=_cli.positive_int, default=[None],
                   metavar="K", help="steps per compiled call (default: the policy's)")  # fmt: skip
    p.add_argument("--batch-shards", nargs="+", type=_cli.positive_int, default=[None],
                   metavar="K", help="TensorFlow: run each batch as K independent passes "
                   "side by side, one thread per op (default: the policy's: one per core "
                   "for residual_cnn on a CPU, else 1); settings where train.py refuses K > 1 "
                   "(JAX, Keras' iterator, BatchNorm) are left out, with a line on stderr; "
                   "an arch left with none is refused")  # fmt: skip
    p.add_argument(
        "--steps",
        type=_cli.positive_int,
        help="timed training steps, rounded up to whole 60-step epochs (default 300 MLP, 60 CNN)",
    )
    p.add_argument(
        "--repeats",
        type=_cli.positive_int,
        help="measurements per setting; the table shows medians (default 2)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="check that every setting runs: one repeat of one 60-step epoch each "
        "(--steps 60 --repeats 1, unless given); too short for the ratios to hold",
    )
    p.add_argument(
        "--compare-torch", action="store_true", help="interleave the PyTorch eager reference"
    )
    p.add_argument(
        "--torch-device",
        default="cpu",
        help="device the PyTorch reference trains on: cpu (default), or cuda on an NVIDIA "
        "GPU (its clock then waits for the GPU's queued work)",
    )
    p.add_argument(
        "--torch-reference",
        default=str(DEFAULT_TORCH_REFERENCE),
        help="the PyTorch reference script (default: scripts/torch_reference.py)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--markdown", action="store_true", help="print the table as Markdown (for docs/)"
    )
    p.add_argument(
        "--from-json",
        metavar="PATH",
        help="print the table of an earlier --json file, measure nothing (with no other "
        "option but --markdown)",
    )
    p.add_argument("--worker", help=_suppress())
    return p


# The options --from-json takes: the file, and the table's format. Every other one
# chooses what to measure (or where to write the measurement), and --from-json measures
# nothing.
FROM_JSON_OPTIONS = ("from_json", "markdown")


def _given_options(argv, but=()) -> list[str]:
    """The options (`--arch`, ...) the command line `argv` gives, but those whose dest is
    in `but`, in the parser's order, whatever their values: a default given by hand
    (`--batch-size 128`) counts."""
    import argparse

    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # options not given stay out of the namespace
    given = set(vars(parser.parse_args(argv))) - set(but)
    return [a.option_strings[0] for a in parser._actions if a.option_strings and a.dest in given]


def _json_kind(value) -> str:
    """The JSON name of `value`'s type: object, array, string, number, boolean, null."""
    kinds = ((bool, "boolean"), (dict, "object"), (list, "array"), (str, "string"),
             ((int, float), "number"))  # fmt: skip
    return next((name for t, name in kinds if isinstance(value, t)), "null")


# What the table formats each value of a --json file as: text, a number, or a number
# that may be missing (null: "-" in the table).
_TEXT = ("arch", "backend", "jit")
_NUMBERS = ("steps_per_execution", "train_samples_per_s", "compile_s", "epoch_s",
            "infer_samples_per_s", "peak_rss_mb")  # fmt: skip
_OPTIONAL_NUMBERS = ("torch_samples_per_s", "ratio_vs_torch", "matmul_share", "target_ratio",
                     "torch_matmul_share", "target_matmul_share", "batch_shards")  # fmt: skip


def _bad_value(saved: dict) -> str | None:
    """The first value of a --json file's rows or machine that its table cannot show."""
    from kmnist_lab.errors import is_real

    def kind_of(value, want):
        return f"{want}, not a JSON {_json_kind(value)}"

    for i, row in enumerate(saved["results"]):
        for key in _TEXT:
            if not isinstance(row[key], str):
                return f'row {i} has "{key}": {kind_of(row[key], "text")}'
        for key in _NUMBERS + _OPTIONAL_NUMBERS:
            value = row.get(key)
            if not (is_real(value) or (value is None and key not in _NUMBERS)):
                return f'row {i} has "{key}": {kind_of(value, "a number")}'
    rate = (saved.get("machine") or {}).get("matmul_gflops", 0)
    if not is_real(rate):
        return f'"machine" has "matmul_gflops": {kind_of(rate, "a number")}'
    return None


def _read_results(path: str) -> dict:
    """The contents of a benchmark.py --json file, checked to hold what its table shows;
    `ConfigError` in one line for a file that cannot be read or is not such a file."""
    from kmnist_lab.errors import ConfigError

    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read benchmark results {path}: {e}") from None
    if not isinstance(saved, dict):
        raise ConfigError(
            f"cannot read benchmark results {path}: it holds a JSON {_json_kind(saved)}, "
            'not the object with a "results" list that benchmark.py --json writes'
        )
    rows = saved.get("results")
    why = None
    if "results" not in saved:
        why = 'no "results" list'
    elif not isinstance(rows, list):
        why = f'"results" is a JSON {_json_kind(rows)}, not a list of rows'
    elif not all(isinstance(r, dict) for r in rows):
        kind = next(_json_kind(r) for r in rows if not isinstance(r, dict))
        why = f"a row of its results is a JSON {kind}, not an object"
    elif "batch_size" not in saved:
        why = 'no "batch_size"'
    elif not isinstance(saved.get("machine") or {}, dict):
        why = f'"machine" is a JSON {_json_kind(saved["machine"])}, not an object'
    else:
        needed = set(TABLE_KEYS)
        missing = sorted(set().union(*(needed - set(r) for r in rows)) if rows else needed)
        why = f"rows lack {', '.join(missing)}" if missing else _bad_value(saved)
    if why:
        raise ConfigError(f"{path} is not a benchmark.py --json file ({why})")
    return saved


def _check_json_path(path: str) -> None:
    """Raises `ConfigError` unless `--json path` can be written: checked before measuring,
    which would otherwise be lost at the end."""
    from kmnist_lab.errors import ConfigError

    target = Path(path)
    folder = target.parent
    try:
        if not path:
            why = "an empty path"
        elif target.is_dir():
            why = f"is a folder (a file in it: {target / 'bench.json'})"
        elif target.exists() and not target.is_file():  # a device or pipe: /dev/null
            if os.access(path, os.W_OK):
                return
            why = "is not writable"
        elif not folder.exists():
            why = f"folder {folder} does not exist"
        elif not folder.is_dir():
            why = f"{folder} is not a folder"
        elif not os.access(folder, os.W_OK | os.X_OK):
            why = f"folder {folder} is not writable"
        else:
            return
    except OSError as e:
        why = e.strerror or str(e)
    raise ConfigError(
        f"--json {path}: {why}; --json takes the path of a file to write in an existing, "
        "writable folder"
    )


def _suppress():
    import argparse

    return argparse.SUPPRESS


def _exit_status(code: int) -> str:
    """How a process that printed nothing ended: `killed by SIGKILL (out of memory?)`,
    `exited with code 3`."""
    if code is not None and code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return "no output" if code == 0 else f"exited with code {code}, no output"


def _run_worker(spec: dict, backend: str) -> dict:
    # Cold compiles: `compile_s` is the time a first run pays, so no persistent cache.
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "JAX_ENABLE_COMPILATION_CACHE": "false"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [_exit_status(proc.returncode)])[-1]
        tail = re.sub(r"^\S+: error: ", "", tail)  # the worker's own one-line error
        from kmnist_lab.errors import KmnistLabError

        raise KmnistLabError(f"benchmark of {spec['arch']} on {backend} failed: {tail}")
    return json.loads(lines[-1])


# Runs the unmodified reference script on DEVICE (not the CPU). Every tensor it creates
# goes there (`torch.set_default_device`) until its first clock read, which comes after
# the model, the data and the warm-up steps: from then on the default-device mode is off,
# since it intercepts every torch call (it slows the reference's CPU training by
# 10-13 %), and, CUDA running asynchronously, each clock read first waits for the queued
# GPU work, so the timing covers the GPU's work, not just the launches.
# Arguments: DEVICE SCRIPT [SCRIPT ARGS...].
_TORCH_ON_DEVICE = """
import os, runpy, sys, time, torch
device = torch.device(sys.argv[1])
if device.type != "cpu":
    torch.set_default_device(device)
    _clock = time.perf_counter
    def _timed_clock():
        torch.set_default_device(None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return _clock()
    time.perf_counter = _timed_clock
sys.argv = sys.argv[2:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python SCRIPT` sets it
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run_torch(path: str, arch: str, batch_size: int, steps: int, device: str = "cpu") -> float:
    args = ["--arch", arch, "--batch-size", str(batch_size), "--steps", str(steps)]
    # On the CPU the script runs as it is, with nothing in between.
    launcher = [] if _is_cpu(device) else ["-c", _TORCH_ON_DEVICE, device]
    proc = subprocess.run([sys.executable, *launcher, path, *args], capture_output=True, text=True)
    from kmnist_lab.errors import KmnistLabError

    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [_exit_status(proc.returncode)])[-1]
        raise KmnistLabError(f"torch reference for {arch} failed: {tail}")
    try:
        return float(proc.stdout.split("samples_per_s")[-1])
    except ValueError:
        raise KmnistLabError(
            f"torch reference {path} printed no 'samples_per_s RATE' line for {arch}"
        ) from None


def _is_cpu(device: str) -> bool:
    """Whether the PyTorch device string `device` names the CPU (`cpu`, `cpu:0`)."""
    return device.split(":")[0] == "cpu"


def _check_torch_device(device: str) -> None:
    """Raises `ConfigError` unless PyTorch can put a tensor on `device` here."""
    from kmnist_lab.errors import ConfigError

    code = "import sys, torch; torch.zeros(1, device=sys.argv[1]) + 1"
    proc = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"--torch-device {device!r}: PyTorch cannot use it here: {tail}")


def _shard_problem(arch: str, backend: str, pipeline: str, shards: int) -> str | None:
    """Why `arch` cannot train in `shards` batch shards on `backend` and `pipeline` (the
    message train.py gives), or None."""
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.errors import ConfigError

    try:
        TrainConfig(arch=arch, backend=backend, input_pipeline=pipeline,
                    batch_shards=shards).check_batch_shards()  # fmt: skip
    except ConfigError as e:
        return str(e)
    return _model_shard_problem(arch)


@functools.cache
def _model_shard_problem(arch: str) -> str | None:
    """Why shards would change what `arch` computes (BatchNorm), or None; built once."""
    from kmnist_lab.device_loop import check_shardable
    from kmnist_lab.errors import ConfigError
    from kmnist_lab.models import build_model

    try:
        check_shardable(build_model(arch))
    except ConfigError as e:
        return str(e)
    return None


def _reference_archs(path) -> list[str]:
    """The model names (`ARCHS`) the PyTorch reference script at `path` defines."""
    import importlib.util

    from kmnist_lab.errors import ConfigError

    spec = importlib.util.spec_from_file_location("torch_reference", path)
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)  # its own folder first, as when it runs (`_TORCH_ON_DEVICE`)
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        if e.name == "torch":
            raise ConfigError(
                "--compare-torch runs the PyTorch reference, and PyTorch is not installed "
                "here: pip install torch (on a CPU-only machine: pip install torch "
                "--index-url https://download.pytorch.org/whl/cpu)"
            ) from None
        raise ConfigError(f"--compare-torch: cannot import {path}: {e}") from None
    finally:
        sys.path.remove(folder)
    return sorted(getattr(module, "ARCHS", {}))


QUICK_NOTE = ("--quick: one short repeat per setting, a check that each runs; measure "
              "without --quick before comparing numbers")  # fmt: skip


def main(argv=None) -> int:
    user_backend = os.environ.get("KERAS_BACKEND")  # before select_backend may set it
    _cli.select_backend([])  # this process only measures the matmul rate
    args = build_parser().parse_args(argv)
    args.steps = args.steps or (60 if args.quick else None)
    args.repeats = args.repeats or (1 if args.quick else 2)
    if args.worker:
        from kmnist_lab.bench import measure

        print(json.dumps(measure(**json.loads(args.worker))))
        return 0
    from kmnist_lab.bench import cpu_name, matmul_gflops
    from kmnist_lab.errors import ConfigError

    if args.from_json is not None:
        ignored = _given_options(argv, but=FROM_JSON_OPTIONS)
        if ignored:
            raise ConfigError(
                f"--from-json measures nothing, it prints the table of {args.from_json}: it "
                f"takes no {', '.join(ignored)} (only --markdown); drop them, or --from-json "
                "to measure"
            )
        saved = _read_results(args.from_json)
        rows, batch_size = saved["results"], saved["batch_size"]
        (_print_markdown if args.markdown else _print_table)(rows, batch_size, saved.get("machine"))
        if saved.get("quick"):
            print(QUICK_NOTE, file=sys.stderr)
        return 0
    from kmnist_lab.speed import check_steps_per_execution

    archs = list(dict.fromkeys(args.arch or ["bn_mlp"]))  # each once, in the order given
    if args.json is not None:
        _check_json_path(args.json)
    reference = Path(args.torch_reference)
    if args.compare_torch and not reference.is_file():
        raise ConfigError(
            f"--torch-reference {args.torch_reference} "
            f"{'is a folder' if reference.is_dir() else 'does not exist'}: --compare-torch "
            "needs a PyTorch reference script, such as scripts/torch_reference.py (the default)"
        )
    if not _is_cpu(args.torch_device) and not args.compare_torch:
        raise ConfigError(f"--torch-device {args.torch_device} needs --compare-torch")
    if not args.compare_torch and "--torch-reference" in _given_options(argv):
        raise ConfigError(f"--torch-reference {args.torch_reference} needs --compare-torch")
    if args.compare_torch:
        theirs = _reference_archs(args.torch_reference)
        if not _is_cpu(args.torch_device):
            _check_torch_device(args.torch_device)
        missing = [a for a in archs if a not in theirs]
        if missing:
            raise ConfigError(
                f"--compare-torch: the PyTorch reference {args.torch_reference} has no "
                f"{missing[0]!r}. It has: {', '.join(theirs)}"
            )
    from kmnist_lab.config import auto_backend
    from kmnist_lab.device_loop import DEVICE_BACKENDS

    def arch_backends(arch):
        chosen = args.backend or [user_backend or "auto"]
        return list(dict.fromkeys(auto_backend(arch) if b == "auto" else b for b in chosen))

    shard_problems: dict[str, dict] = {}
    for arch in archs:  # refuse impossible settings before measuring anything
        runnable = [(b, p) for b in arch_backends(arch) for p in args.input_pipeline
                    if p != "device" or b in DEVICE_BACKENDS]  # fmt: skip
        if not runnable:
            raise ConfigError(
                f"--input-pipeline device needs the {' or '.join(DEVICE_BACKENDS)} backend; "
                f"{arch} would run on {', '.join(arch_backends(arch))}: add --backend jax or "
                "--input-pipeline iterator"
            )
        if "torch" in arch_backends(arch):
            for k in args.steps_per_execution:
                check_steps_per_execution("torch", k)
        # Batch shards where train.py would refuse them (on JAX, Keras' iterator, a
        # BatchNorm model) are left out of the product, as `device` is on torch; where
        # no setting of the product can take them, the run is refused before measuring.
        sharded = [(b, p, k) for b in arch_backends(arch) for p in args.input_pipeline
                   for k in args.batch_shards if k is not None and k > 1]  # fmt: skip
        problems = [_shard_problem(arch, *setting) for setting in sharded]
        unsharded = [k for k in args.batch_shards if k is None or k == 1]
        if sharded and all(problems) and not unsharded:
            raise ConfigError(problems[0])
        shard_problems[arch] = dict(zip(sharded, problems, strict=True))
        for (backend, pipeline, k), problem in shard_problems[arch].items():
            if problem:
                print(f"{arch} on {backend}, input {pipeline}: --batch-shards {k} left out: "
                      f"{problem}", file=sys.stderr)  # fmt: skip
    cpu = cpu_name()
    gflops_start = matmul_gflops()
    print(f"NumPy fp32 matmul: {gflops_start:.1f} GFLOP/s on {os.cpu_count()} CPU cores ({cpu})",
          file=sys.stderr)  # fmt: skip
    samples: dict[tuple, list] = {}
    torch_rates: dict[str, list] = {}
    from kmnist_lab.errors import KmnistLabError

    # A failed measurement (a worker killed, the reference failing) ends the run, and
    # what was measured before it still gets its table and JSON, then the error.
    failure = None
    try:
        for rep in range(args.repeats):
            for arch in archs:
                # Whole 60-step epochs, as `bench.measure` times them; torch gets as many.
                steps = 60 * math.ceil((args.steps or (300 if arch in MLPS else 60)) / 60)
                for backend, jit, spe, pipeline, shards in itertools.product(
                    arch_backends(arch), args.jit, args.steps_per_execution, args.input_pipeline,
                    args.batch_shards,
                ):  # fmt: skip
                    if pipeline == "device" and backend not in DEVICE_BACKENDS:
                        continue  # not on torch; the table shows Keras' iterator there
                    if shard_problems[arch].get((backend, pipeline, shards)):
                        continue  # shards this setting cannot take (see above)
                    spec = {"arch": arch, "batch_size": args.batch_size, "jit": jit,
                            "steps_per_execution": spe, "steps": steps,
                            "precision": args.precision, "input_pipeline": pipeline,
                            "batch_shards": shards}  # fmt: skip
                    result = _run_worker(spec, backend)
                    key = (arch, backend, jit, spe, pipeline, shards)
                    samples.setdefault(key, []).append(result)
                    print(f"[{rep + 1}/{args.repeats}] {arch} {backend} jit={jit} "
                          f"spe={result['steps_per_execution']} input={result['input_pipeline']} "
                          f"shards={result.get('batch_shards', 1)}: "
                          f"{result['train_samples_per_s']:.0f} samples/s", file=sys.stderr)  # fmt: skip
                if args.compare_torch:
                    rate = _run_torch(
                        args.torch_reference, arch, args.batch_size, steps, args.torch_device
                    )
                    torch_rates.setdefault(arch, []).append(rate)
                    print(
                        f"[{rep + 1}/{args.repeats}] {arch} torch: {rate:.0f} samples/s",
                        file=sys.stderr,
                    )
    except KmnistLabError as e:
        failure = e
        print(f"benchmark.py: {e}; stopping: the table below has what was measured before it",
              file=sys.stderr)  # fmt: skip
    # Measured again at the end: the shares use the better of the two, and a machine
    # whose speed changed during the run says so (its ratios, interleaved, hold better).
    gflops_end = matmul_gflops()
    gflops = max(gflops_start, gflops_end)
    print(f"NumPy fp32 matmul at the end: {gflops_end:.1f} GFLOP/s", file=sys.stderr)
    if min(gflops_start, gflops_end) < 0.8 * gflops:
        print(f"warning: the matmul rate changed by more than 20 % during the run "
              f"({gflops_start:.0f} -> {gflops_end:.0f} GFLOP/s, the lower reading more "
              "than 20 % below the higher): the machine is shared or throttled; compare "
              "the interleaved ratios, not absolute rates",
              file=sys.stderr)  # fmt: skip
    rows = []
    for (arch, *_), results in samples.items():
        med = {k: statistics.median(r[k] for r in results)
               for k in ("train_samples_per_s", "compile_s", "epoch_s", "infer_samples_per_s", "peak_rss_mb")}  # fmt: skip
        row = {**results[0], **med, "runs": [r["train_samples_per_s"] for r in results]}
        torch = statistics.median(torch_rates[arch]) if arch in torch_rates else None
        row["torch_samples_per_s"] = torch
        row["ratio_vs_torch"] = med["train_samples_per_s"] / torch if torch else None
        flops = row.get("train_flops_per_sample")

        def share(rate, flops=flops):
            return rate * flops / 1e9 / gflops if flops and rate else None

        # The shares compare with the CPU's matmul rate: none for work done on a GPU.
        row["matmul_share"] = None if row.get("accelerator") else share(med["train_samples_per_s"])
        torch_on_cpu = _is_cpu(args.torch_device)
        row["torch_matmul_share"] = share(torch) if torch_on_cpu else None
        # The targets are for the CPU (both sides), at batch 128.
        on_cpu = not row.get("accelerator") and torch_on_cpu
        target = TORCH_RATIO_TARGETS.get(arch) if args.batch_size == 128 and on_cpu else None
        row["target_ratio"] = target
        row["target_matmul_share"] = share(torch * target) if torch and target else None
        rows.append(row)
    machine = {"cpu_count": os.cpu_count(), "cpu": cpu, "matmul_gflops": gflops,
               "matmul_gflops_start": gflops_start, "matmul_gflops_end": gflops_end}  # fmt: skip
    (_print_markdown if args.markdown else _print_table)(rows, args.batch_size, machine)
    if args.quick:
        print(QUICK_NOTE, file=sys.stderr)
    if args.json is not None:
        results = {"schema": 1, "machine": machine, "batch_size": args.batch_size,
                   "repeats": args.repeats, "quick": args.quick,
                   "torch_device": args.torch_device, "results": rows, "torch": torch_rates,
                   "failed": None if failure is None else str(failure)}  # fmt: skip
        from kmnist_lab.runs import atomic_write_json

        try:
            atomic_write_json(args.json, results)
        except OSError as e:  # the folder went away or became read-only while measuring
            raise ConfigError(
                f"cannot write --json {args.json}: {e.strerror or e}; the table above has "
                "the results"
            ) from None
    if failure is not None:
        raise failure
    return 0


def fmt(value, spec):
    """`format(value, spec)`, or "-" for a missing value."""
    return format(value, spec) if value is not None else "-"


def _precision(rows):
    """The precision every row of one benchmark command shares (float32 before it was
    recorded), and where the rows trained when that was a GPU/TPU."""
    precision = rows[0].get("precision", "float32") if rows else "float32"
    return precision + (", on a GPU/TPU" if any(r.get("accelerator") for r in rows) else "")


def _pct(share):
    return fmt(share and 100 * share, ".0f")


def _machine(machine) -> str:
    """Where a table was measured: the CPU, its cores and its matmul rate, where known
    (JSON files before session 19 record the cores and the rate only)."""
    if not machine:
        return ""
    cpu = f" ({machine['cpu']})" if machine.get("cpu") else ""
    return (f"{machine.get('cpu_count')} CPU cores{cpu}, NumPy fp32 matmul "
            f"{machine.get('matmul_gflops', 0):.0f} GFLOP/s")  # fmt: skip


def _print_table(rows, batch_size, machine=None):
    header = (f"{'arch':<13} {'backend':<10} {'input':<8} {'jit':<4} {'xla':<5} {'spe':>3} {'sh':>2} {'train/s':>9} "
              f"{'torch/s':>9} {'ratio':>6} {'target':>6} {'compile s':>9} {'epoch s':>8} "
              f"{'infer/s':>9} {'RSS MB':>7} {'%mm':>4} {'torch %mm':>9} {'needs %mm':>9}")  # fmt: skip
    where = f"; {_machine(machine)}" if machine else ""
    print(
        f"batch size {batch_size}; {_precision(rows)}; medians; samples/s; "
        f"%mm: share of the NumPy fp32 matmul rate{where}\n{header}\n{'-' * len(header)}"
    )
    for r in rows:
        print(f"{r['arch']:<13} {r['backend']:<10} {r.get('input_pipeline', 'iterator'):<8} "
              f"{r['jit']:<4} {str(r['jit_compile']):<5} "
              f"{r['steps_per_execution']:>3} {r.get('batch_shards', 1):>2} "
              f"{r['train_samples_per_s']:>9.0f} "
              f"{fmt(r['torch_samples_per_s'], '.0f'):>9} {fmt(r['ratio_vs_torch'], '.2f'):>6} "
              f"{fmt(r.get('target_ratio'), '.2f'):>6} "
              f"{r['compile_s']:>9.1f} {r['epoch_s']:>8.1f} {r['infer_samples_per_s']:>9.0f} "
              f"{r['peak_rss_mb']:>7.0f} {_pct(r['matmul_share']):>4} "
              f"{_pct(r.get('torch_matmul_share')):>9} {_pct(r.get('target_matmul_share')):>9}")  # fmt: skip


def _print_markdown(rows, batch_size, machine=None):
    where = f"; {_machine(machine)}" if machine else ""
    print(f"batch size {batch_size}, {_precision(rows)}, medians of the repeats, samples/s; "
          f"% mm: share of the NumPy fp32 matmul rate{where}\n")  # fmt: skip
    print("| arch | backend | input | jit | XLA | spe | shards | train/s | torch/s | ratio | target "
          "| compile s | epoch s | infer/s | peak RSS MB | % mm | torch % mm | needs % mm |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['backend']} | {r.get('input_pipeline', 'iterator')} | "
              f"{r['jit']} | {r['jit_compile']} | "
              f"{r['steps_per_execution']} | {r.get('batch_shards', 1)} | "
              f"{r['train_samples_per_s']:.0f} | "
              f"{fmt(r['torch_samples_per_s'], '.0f')} | {fmt(r['ratio_vs_torch'], '.2f')} | "
              f"{fmt(r.get('target_ratio'), '.2f')} | "
              f"{r['compile_s']:.1f} | {r['epoch_s']:.1f} | {r['infer_samples_per_s']:.0f} | "
              f"{r['peak_rss_mb']:.0f} | {_pct(r['matmul_share'])} | "
              f"{_pct(r.get('torch_matmul_share'))} | {_pct(r.get('target_matmul_share'))} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(_cli.run(main, resumable=False))
