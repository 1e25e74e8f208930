"""The benchmark's JSON schema on a tiny run (no timing assertions: timing is for the benchmark)."""

import importlib.util
import itertools
import json
import os
import subprocess
import sys

import _cli
import benchmark
import pytest

# PyTorch is an optional extra (`.[torch]`; CI installs it): without it these skip.
NEEDS_TORCH = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="PyTorch is not installed"
)


def test_benchmark_json_schema(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--arch", "plain_mlp", "--batch-size", "32", "--steps", "3", "--repeats", "1",
            "--backend", "tensorflow", "--jit", "off", "--json", str(out)]  # fmt: skip
    assert _cli.run(benchmark.main, argv) == 0
    table = capsys.readouterr().out
    assert "plain_mlp" in table and "train/s" in table
    data = json.loads(out.read_text())
    machine = data["machine"]
    assert data["schema"] == 1 and machine["cpu"] and machine["cpu_count"] >= 1
    rates = (machine["matmul_gflops_start"], machine["matmul_gflops_end"])
    assert min(rates) > 0 and machine["matmul_gflops"] == max(rates)
    assert data["torch_device"] == "cpu"
    (row,) = data["results"]
    expected = {"arch", "backend", "batch_size", "jit", "jit_compile", "steps_per_execution",
                "train_samples_per_s", "compile_s", "epoch_s", "infer_samples_per_s", "peak_rss_mb",
                "torch_samples_per_s", "ratio_vs_torch", "matmul_share", "runs",
                "train_flops_per_sample", "precision", "torch_matmul_share", "target_ratio",
                "target_matmul_share", "accelerator", "batch_shards"}  # fmt: skip
    assert expected <= set(row)
    assert row["arch"] == "plain_mlp" and row["jit_compile"] is False and row["batch_size"] == 32
    assert row["backend"] == "tensorflow" and row["precision"] == "float32"
    assert row["accelerator"] is False  # no GPU in the test run: the CPU shares apply
    # 784-512-128-10: 2 * (3 * (784*512 + 512*128 + 128*10) - 784*512) FLOPs per sample.
    assert row["train_flops_per_sample"] == 2_006_528
    assert (
        0
        < row["matmul_share"]
        == pytest.approx(
            row["train_samples_per_s"] * 2_006_528 / 1e9 / data["machine"]["matmul_gflops"]
        )
    )
    assert (
        row["train_samples_per_s"] > 0
        and row["peak_rss_mb"] > 0
        and row["torch_samples_per_s"] is None
    )


@pytest.mark.parametrize("argv, match", [
    (["--arch", "vgg"], "argument --arch: invalid choice: 'vgg' (choose from 'plain_mlp',"),
    (["--compare-torch", "--torch-reference", "/nope.py"], "--compare-torch needs"),
    (["--backend", "torch", "--input-pipeline", "device"],
     "device needs the jax or tensorflow backend; bn_mlp would run on torch"),
    (["--backend", "torch", "--steps-per-execution", "10"], "torch backend runs one step"),
    (["--arch", "relu_mlp", "--compare-torch", "--torch-reference", "{ref}"],
     "reference {ref} has no 'relu_mlp'. It has: bn_mlp"),
    (["--from-json", "{list}"], "cannot read benchmark results"),
    pytest.param(["--compare-torch", "--torch-device", "nosuch"],
                 "--torch-device 'nosuch': PyTorch cannot", marks=NEEDS_TORCH),
    (["--torch-device", "cuda"], "--torch-device cuda needs --compare-torch"),
    # refused before the matmul rate is measured, as train.py refuses it
    (["--arch", "bn_mlp", "--backend", "jax", "--batch-shards", "2"],
     "`batch_shards` > 1 needs the tensorflow backend, the device input pipeline and no "
     "distribute. Received: batch_shards=2 with backend='jax'"),
    (["--arch", "bn_mlp", "--backend", "tensorflow", "--batch-shards", "2"],
     "batch shards would change what bn_mlp computes: layer bn1: BatchNormalization"),
    (["--from-json", "{rowless}"], "is not a benchmark.py --json file"),
])  # fmt: skip
def test_benchmark_bad_input(argv, match, capsys, tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "rowless.json").write_text('{"results": [{"arch": "x"}], "batch_size": 128}')
    (tmp_path / "ref.py").write_text('ARCHS = {"bn_mlp": None}\n')  # a reference of one model
    names = {"list": tmp_path / "list.json", "rowless": tmp_path / "rowless.json",
             "ref": tmp_path / "ref.py"}  # fmt: skip
    argv = [a.format(**names) for a in argv]
    match = match.format(**names)
    assert _cli.run(benchmark.main, argv) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_arch_takes_several_names_as_the_other_list_flags_do():
    args = benchmark.build_parser().parse_args(["--arch", "bn_mlp", "relu_mlp", "--arch", "mlp"])
    assert args.arch == ["bn_mlp", "relu_mlp", "mlp"]  # and `--arch A --arch B`, as documented


def test_a_failed_worker_is_one_error_line_not_two_prefixes(monkeypatch):
    failed = subprocess.CompletedProcess([], 2, stdout="", stderr="benchmark.py: error: boom\n")
    monkeypatch.setattr(benchmark.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(Exception, match=r"^benchmark of bn_mlp on jax failed: boom$"):
        benchmark._run_worker({"arch": "bn_mlp"}, "jax")


def test_a_worker_killed_by_a_signal_says_so(monkeypatch):
    """The out-of-memory killer's SIGKILL was reported as "failed: no output"."""
    killed = subprocess.CompletedProcess([], -9, stdout="", stderr="")
    monkeypatch.setattr(benchmark.subprocess, "run", lambda *a, **k: killed)
    with pytest.raises(Exception, match=r"on jax failed: killed by SIGKILL \(out of memory\?\)$"):
        benchmark._run_worker({"arch": "bn_mlp"}, "jax")
    with pytest.raises(Exception, match=r"reference for bn_mlp failed: killed by SIGKILL"):
        benchmark._run_torch("ref.py", "bn_mlp", 128, 60)
    monkeypatch.setattr(benchmark.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess([], 3, "", ""))  # fmt: skip
    with pytest.raises(Exception, match=r"failed: exited with code 3, no output$"):
        benchmark._run_worker({"arch": "bn_mlp"}, "jax")


def test_a_failed_measurement_keeps_the_table_and_json_of_the_others(tmp_path, capsys, monkeypatch):
    """One failure (the second arch's worker here) lost every measurement made before it:
    no table, no --json, in a run of several minutes."""
    from kmnist_lab.errors import KmnistLabError

    real = benchmark._run_worker

    def second_fails(spec, backend):
        if spec["arch"] == "relu_mlp":
            raise KmnistLabError("benchmark of relu_mlp on tensorflow failed: killed by SIGKILL")
        return real(spec, backend)

    monkeypatch.setattr(benchmark, "_run_worker", second_fails)
    out = tmp_path / "bench.json"
    argv = ["--arch", "plain_mlp", "relu_mlp", "--batch-size", "32", "--steps", "3",
            "--repeats", "1", "--backend", "tensorflow", "--jit", "off", "--json", str(out)]  # fmt: skip
    assert _cli.run(benchmark.main, argv) == 2
    captured = capsys.readouterr()
    assert "plain_mlp" in captured.out and "relu_mlp" not in captured.out
    err = captured.err.strip().splitlines()
    assert err[-1].endswith("error: benchmark of relu_mlp on tensorflow failed: killed by SIGKILL")
    data = json.loads(out.read_text())
    assert [r["arch"] for r in data["results"]] == ["plain_mlp"]
    assert data["failed"] == "benchmark of relu_mlp on tensorflow failed: killed by SIGKILL"


def test_compare_torch_without_pytorch_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as if not installed
    assert _cli.run(benchmark.main, ["--compare-torch"]) == 2
    err = capsys.readouterr().err
    assert "PyTorch is not installed here: pip install torch" in err
    assert len(err.strip().splitlines()) == 1


def test_train_flops_counts_dense_and_conv_multiply_adds():
    import keras

    from kmnist_lab.bench import train_flops
    from kmnist_lab.models import build_model

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(3)])
    # forward 2*(6*4 + 4*3), kernel gradients the same, input gradient of layer 2 only.
    assert train_flops(model) == 2 * (3 * (24 + 12) - 24)
    conv = keras.Sequential([keras.Input((5, 5, 1)), keras.layers.Conv2D(2, 3),
                             keras.layers.Flatten(), keras.layers.Dense(3)])  # fmt: skip
    # conv: 3x3 output positions x (3*3*1*2) kernel = 162 multiply-adds; dense 18*3 = 54.
    assert train_flops(conv) == 2 * (3 * (162 + 54) - 162)
    assert train_flops(build_model("residual_cnn")) == 11_618_304
    assert train_flops(build_model("resnet18")) == 732_691_456


def test_train_flops_is_none_for_layers_it_cannot_count():
    import keras

    from kmnist_lab.bench import train_flops

    conv1d = keras.Sequential([keras.Input((8, 1)), keras.layers.Conv1D(2, 3)])
    assert train_flops(conv1d) is None
    assert train_flops(keras.Sequential([keras.Input((4,)), keras.layers.ReLU()])) is None


def test_the_torch_reference_ships_with_the_repository():
    # --compare-torch works from a clone: its default reference is inside the repo.
    assert benchmark.DEFAULT_TORCH_REFERENCE.is_file()
    assert benchmark.DEFAULT_TORCH_REFERENCE.is_relative_to(benchmark.ROOT)
    text = benchmark.DEFAULT_TORCH_REFERENCE.read_text()
    assert "def mlp(" in text and "torch.optim.SGD(model.parameters(), lr=0.01)" in text


@NEEDS_TORCH
def test_the_torch_reference_runs_off_the_cpu_through_the_device_launcher():
    # `--torch-device` runs the unmodified reference under a launcher that sets torch's
    # default device (and, for CUDA, times the GPU's work). The meta device runs it here:
    # the model, data and steps are shapes only, but the launcher's whole path runs.
    ref = str(benchmark.DEFAULT_TORCH_REFERENCE)
    assert benchmark._run_torch(ref, "bn_mlp", 8, 3, "meta") > 0
    assert benchmark._run_torch(ref, "bn_mlp", 8, 3, "cpu") > 0  # the script as it is


@NEEDS_TORCH
def test_the_device_launcher_stops_the_default_device_mode_before_timing(tmp_path):
    # The default-device mode intercepts every torch call (10-13 % of the reference's
    # CPU rate): it must be off for the timed steps, which start at the first clock read.
    (tmp_path / "ref.py").write_text(
        "import time, torch\n"
        "before = torch.zeros(1).device.type\n"
        "time.perf_counter()\n"
        "after = torch.zeros(1).device.type\n"
        "print(f'{before} {after} samples_per_s 1')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", benchmark._TORCH_ON_DEVICE, "meta", str(tmp_path / "ref.py")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert proc.stdout.split()[:2] == ["meta", "cpu"]


def _reference_beside_a_module(folder):
    (folder / "helper_mod.py").write_text("RATE = 123\n")
    (folder / "ref.py").write_text(
        "import helper_mod\nprint(f'torch x bs=1 samples_per_s {helper_mod.RATE}')\n"
    )
    return str(folder / "ref.py")


def test_a_reference_runs_as_python_would(tmp_path):
    # `python ref.py` puts ref.py's folder first on sys.path, so a reference may import
    # a module beside it; the CPU path runs it directly.
    assert benchmark._run_torch(_reference_beside_a_module(tmp_path), "x", 1, 1, "cpu") == 123
    # and `--compare-torch` reads its ARCHS the same way before running it
    (tmp_path / "ref.py").write_text("from helper_mod import RATE\nARCHS = {'x': RATE}\n")
    assert benchmark._reference_archs(tmp_path / "ref.py") == ["x"]
    assert str(tmp_path) not in sys.path


@NEEDS_TORCH
def test_the_device_launcher_runs_a_reference_as_python_would(tmp_path):
    # The launcher (`--torch-device` other than cpu) imports torch, then runs the
    # reference as `python ref.py` would: its folder first on sys.path.
    assert benchmark._run_torch(_reference_beside_a_module(tmp_path), "x", 1, 1, "meta") == 123


def test_the_published_results_print_as_tables(capsys):
    # docs/performance.md's H100 and CPU (runs 13-21) tables come from these files;
    # --from-json reprints them: a row per result, the GPU note only for GPU runs, and
    # on the CPU the targets beside the ratios.
    files = sorted((benchmark.ROOT / "docs" / "bench").glob("*.json"))
    assert {"h100_jax_float32.json", "cpu_run14.json"} <= {p.name for p in files}
    for path in files:
        assert _cli.run(benchmark.main, ["--from-json", str(path), "--markdown"]) == 0
        table = capsys.readouterr().out
        saved = json.loads(path.read_text())
        rows = saved["results"]
        for r in rows:
            assert f"| {r['arch']} | {r['backend']} |" in table, path.name
        on_gpu = any(r.get("accelerator") for r in rows)
        assert ("on a GPU/TPU" in table) is on_gpu, path.name
        for r in rows:  # a CPU row at batch 128, beside PyTorch: its target
            if not on_gpu and saved["batch_size"] == 128 and r["torch_samples_per_s"]:
                target = benchmark.TORCH_RATIO_TARGETS[r["arch"]]
                assert f"| {r['ratio_vs_torch']:.2f} | {target:.2f} |" in table, path.name


@pytest.mark.parametrize("device, cpu", [("cpu", True), ("cpu:0", True), ("cuda", False),
                                         ("cuda:1", False)])  # fmt: skip
def test_cpu_torch_devices_keep_the_cpu_columns(device, cpu):
    # The matmul shares and CPU targets apply when the reference ran on the CPU, however
    # the device is spelled.
    assert benchmark._is_cpu(device) is cpu


def test_without_a_backend_choice_each_arch_gets_its_auto_backend(tmp_path):
    # With neither --backend nor KERAS_BACKEND, the benchmark measures what train.py
    # runs: `auto_backend(arch)`. (A regression once set KERAS_BACKEND in the parent
    # process first, and every arch was then measured on TensorFlow.)
    import os

    from kmnist_lab.config import auto_backend

    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    argv = ["--arch", "plain_mlp", "--batch-size", "8", "--steps", "1", "--repeats", "1",
            "--json", str(out)]  # fmt: skip
    subprocess.run([sys.executable, str(benchmark.ROOT / "scripts" / "benchmark.py"), *argv],
                   env=env, capture_output=True, text=True, check=True)  # fmt: skip
    (row,) = json.loads(out.read_text())["results"]
    assert row["backend"] == auto_backend("plain_mlp")


def test_the_table_shows_medians_of_the_repeats_and_their_ratio_to_torch(tmp_path, monkeypatch):
    """Three repeats, measured (here: made up) interleaved with the PyTorch reference:
    each column is the median of its repeats, and the ratio is ours over torch's."""
    from kmnist_lab import bench

    ours = iter([100.0, 400.0, 200.0])  # median 200, mean 233
    theirs = iter([50.0, 400.0, 100.0])  # median 100

    def worker(spec, backend):
        rate = next(ours)
        return {"arch": spec["arch"], "backend": backend, "batch_size": spec["batch_size"],
                "jit": spec["jit"], "jit_compile": False, "precision": "float32",
                "accelerator": False, "input_pipeline": "iterator", "steps_per_execution": 1,
                "train_samples_per_s": rate, "compile_s": rate / 100, "epoch_s": 1.0,
                "epoch_samples": 7680, "infer_samples_per_s": 10 * rate, "peak_rss_mb": 50.0,
                "timed_steps": 60, "train_flops_per_sample": 2_000_000}  # fmt: skip

    monkeypatch.setattr(benchmark, "_run_worker", worker)
    monkeypatch.setattr(benchmark, "_run_torch", lambda *args: next(theirs))
    monkeypatch.setattr(benchmark, "_reference_archs", lambda path: ["bn_mlp"])
    monkeypatch.setattr(bench, "matmul_gflops", lambda: 4.0)
    out = tmp_path / "bench.json"
    argv = ["--arch", "bn_mlp", "--backend", "tensorflow", "--repeats", "3", "--steps", "60",
            "--compare-torch", "--torch-reference", __file__, "--json", str(out)]  # fmt: skip
    assert _cli.run(benchmark.main, argv) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["runs"] == [100.0, 400.0, 200.0]
    assert row["train_samples_per_s"] == 200.0 and row["compile_s"] == 2.0
    assert row["infer_samples_per_s"] == 2000.0
    assert row["torch_samples_per_s"] == 100.0 and row["ratio_vs_torch"] == 2.0
    assert row["target_ratio"] == benchmark.TORCH_RATIO_TARGETS["bn_mlp"]  # batch 128, CPU
    # 200 samples/s x 2 MFLOP = 0.4 GFLOP/s of the machine's 4: a share of 0.1.
    assert row["matmul_share"] == pytest.approx(0.1)
    assert row["torch_matmul_share"] == pytest.approx(0.05)


def test_measure_passes_every_setting_on_and_computes_rates_from_its_clock(monkeypatch):
    """`bench.measure` with a fake clock (1 s between reads) and a `fit` that only
    records its calls: the settings reach the model and the loops, and the rates are
    samples over the clocked seconds. No timing is measured."""
    import keras
    import numpy as np

    from kmnist_lab import bench

    clock = iter(range(100))
    monkeypatch.setattr(bench, "time", type("Clock", (), {"perf_counter": lambda: next(clock)}))
    calls, models, predicted = [], [], []
    monkeypatch.setattr(bench, "fit", lambda model, x, y, **kw: calls.append((len(x), kw)))
    predict = keras.Model.predict
    monkeypatch.setattr(keras.Model, "predict", lambda self, x, **kw: predicted.append(len(x))
                        or predict(self, x, **kw))  # fmt: skip
    build = bench.build_model
    monkeypatch.setattr(bench, "build_model", lambda arch: models.append(build(arch)) or models[-1])
    # batch 20: 60 steps = 1200 samples; 61 steps round up to 2 whole epochs.
    row = bench.measure("plain_mlp", batch_size=20, jit="off", steps_per_execution=3, steps=61,
                        epoch_samples=300, precision="mixed", input_pipeline="iterator")  # fmt: skip
    (model,) = models
    assert model.dtype_policy.name == "mixed_bfloat16" and keras.config.dtype_policy().name == (
        "float32"
    )
    assert model.steps_per_execution == 3 and model.jit_compile is False
    assert [(n, kw["epochs"], kw["batch_size"], kw["pipeline"]) for n, kw in calls] == [
        (1200, 1, 20, "iterator"),  # warm-up epoch, with validation
        (1200, 2, 20, "iterator"),  # timed: whole 60-step epochs
        (300, 1, 20, "iterator"),  # one epoch of epoch_samples, with validation
    ]
    # validation on epoch_samples / 6 images (never less than a batch)
    assert [len(kw["validation_data"][0]) for _, kw in calls if "validation_data" in kw] == [50, 50]
    assert "validation_data" not in calls[1][1] and calls[1][1]["shuffle"] is False
    assert row["timed_steps"] == 120 and row["epoch_samples"] == 300
    assert row["train_samples_per_s"] == 2400.0  # 2 epochs x 1200 samples in 1 s
    assert row["compile_s"] == 0.5  # 1 s of warm-up less its 1200 / 2400 s of training
    assert row["epoch_s"] == 1.0
    assert row["infer_samples_per_s"] == 1024.0  # whole batches of 1024 only, in 1 s
    assert predicted == [1024, 1024]  # the same array twice, see the test below
    assert row["steps_per_execution"] == 3 and row["jit_compile"] is False
    assert row["batch_shards"] == 1 and {kw["batch_shards"] for _, kw in calls} == {1}
    assert (row["jit"], row["precision"], row["input_pipeline"]) == ("off", "mixed", "iterator")
    assert row["batch_size"] == 20 and row["train_flops_per_sample"] == 2_006_528
    assert isinstance(row["accelerator"], bool) and np.isfinite(row["peak_rss_mb"])


def test_measure_defaults_to_the_policys_settings(monkeypatch):
    from kmnist_lab import bench
    from kmnist_lab.speed import resolve_input_pipeline, resolve_jit, resolve_steps_per_execution

    clock = iter(range(100))
    monkeypatch.setattr(bench, "time", type("Clock", (), {"perf_counter": lambda: next(clock)}))
    monkeypatch.setattr(bench, "fit", lambda *args, **kw: None)
    row = bench.measure("plain_mlp", batch_size=8, steps=1)
    assert row["steps_per_execution"] == resolve_steps_per_execution("plain_mlp", 60)
    assert row["jit_compile"] is bool(resolve_jit("auto", "plain_mlp"))
    assert row["input_pipeline"] == resolve_input_pipeline("auto")
    assert row["timed_steps"] == 60 and row["epoch_samples"] == 480  # 60 batches of 8
    assert row["infer_samples_per_s"] == 480.0  # fewer than 1024: one batch of all


def test_measure_times_inference_after_a_call_on_the_same_array(monkeypatch):
    """Batch 40: 2,400 images, 2,048 of them in whole batches of 1024. The untimed call
    covers all of them: a warm-up on one batch left the timed call to trace Keras'
    2-batch loop (residual_cnn: 10.8k samples/s timed, 28k once traced)."""
    import keras

    from kmnist_lab import bench

    clock = iter(range(100))
    monkeypatch.setattr(bench, "time", type("Clock", (), {"perf_counter": lambda: next(clock)}))
    monkeypatch.setattr(bench, "fit", lambda *args, **kw: None)
    predicted = []
    predict = keras.Model.predict
    monkeypatch.setattr(keras.Model, "predict", lambda self, x, **kw: predicted.append(len(x))
                        or predict(self, x, **kw))  # fmt: skip
    row = bench.measure("plain_mlp", batch_size=40, steps=1)
    assert predicted == [2048, 2048] and row["infer_samples_per_s"] == 2048.0


def test_matmul_rate_counts_2_n_cubed_flops_per_product_and_keeps_the_best_round(monkeypatch):
    from kmnist_lab import bench

    # Rounds of 8 products taking 4 s, 2 s and 8 s (the warm-up product is not timed).
    clock = iter([10.0, 14.0, 20.0, 22.0, 30.0, 38.0])
    monkeypatch.setattr(bench, "time", type("Clock", (), {"perf_counter": lambda: next(clock)}))
    assert bench.matmul_gflops(n=100, repeats=8, rounds=3) == pytest.approx(
        2 * 100**3 * 8 / 2 / 1e9
    )


def test_a_matmul_rate_that_changes_during_the_benchmark_is_reported(monkeypatch, capsys):
    """The rate is measured before and after the runs: the shares use the better one,
    and a drop of more than 20 % says the machine was disturbed."""
    _, _, data = _fake_run(monkeypatch, ["--arch", "bn_mlp", "--repeats", "1"], matmul=[2.0, 4.0])
    assert data["machine"]["matmul_gflops"] == 4.0
    # 100 samples/s x 2 MFLOP = 0.2 GFLOP/s of the better rate, 4.
    assert data["results"][0]["matmul_share"] == pytest.approx(0.05)
    err = capsys.readouterr().err
    assert "matmul rate changed by more than 20 % during the run (2 -> 4 GFLOP/s, " in err
    _fake_run(monkeypatch, ["--arch", "bn_mlp", "--repeats", "1"], matmul=[4.0, 3.5])
    assert "changed" not in capsys.readouterr().err


def test_train_flops_counts_only_the_layers_whose_cost_it_knows():
    import keras

    from kmnist_lab.bench import train_flops

    # A depthwise or transposed convolution's kernel is 4-D too, but not a Conv2D's.
    for layer in (keras.layers.DepthwiseConv2D(3), keras.layers.Conv2DTranspose(2, 3)):
        model = keras.Sequential([keras.Input((5, 5, 2)), layer])
        assert train_flops(model) is None
    # Nested models count their layers too, the first one being the first layer.
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    outer = keras.Sequential([keras.Input((6,)), inner, keras.layers.Dense(3)])
    assert train_flops(outer) == 2 * (3 * (24 + 12) - 24)


def _fake_run(monkeypatch, argv, rates=None, torch_rates=None, accelerator=False, flops=2_000_000,
              json_path=None, matmul=(4.0, 4.0)):  # fmt: skip
    """Runs benchmark.main on made-up measurements (ours: `rates`, then 100 samples/s;
    torch: `torch_rates`, then 50; the matmul rate `matmul`, at the start and the
    end of the run: 4 GFLOP/s); returns the specs the
    workers got, the torch reference's calls and the --json file's contents."""
    from kmnist_lab import bench

    specs, torch_calls = [], []
    ours = iter(rates or [])

    def worker(spec, backend):
        specs.append((backend, spec))
        rate = next(ours, 100.0)
        return {"arch": spec["arch"], "backend": backend, "batch_size": spec["batch_size"],
                "jit": spec["jit"], "jit_compile": spec["jit"] == "on",
                "precision": spec["precision"], "accelerator": accelerator,
                "input_pipeline": spec["input_pipeline"],
                "steps_per_execution": spec["steps_per_execution"] or 1,
                "batch_shards": spec["batch_shards"] or 1,
                "train_samples_per_s": rate, "compile_s": 1.25, "epoch_s": 2.5,
                "epoch_samples": 7680, "infer_samples_per_s": 3000.0, "peak_rss_mb": 321.0,
                "timed_steps": spec["steps"], "train_flops_per_sample": flops}  # fmt: skip

    theirs = iter(torch_rates or [])

    def run_torch(*args):
        torch_calls.append(args)
        return next(theirs, 50.0)

    monkeypatch.setattr(benchmark, "_run_worker", worker)
    monkeypatch.setattr(benchmark, "_run_torch", run_torch)
    monkeypatch.setattr(benchmark, "_reference_archs", lambda path: ["bn_mlp", "resnet18"])
    monkeypatch.setattr(benchmark, "_check_torch_device", lambda device: None)
    mm_rates = itertools.cycle(matmul)  # start, end, start, ... for a second run
    monkeypatch.setattr(bench, "cpu_name", lambda: "Fake CPU 9000")
    monkeypatch.setattr(bench, "matmul_gflops", lambda: next(mm_rates))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = str(json_path or f"{tmp}/bench.json")
        assert _cli.run(benchmark.main, [*argv, "--json", out]) == 0
        with open(out) as f:
            return specs, torch_calls, json.load(f)


def test_every_setting_of_the_product_reaches_a_worker(monkeypatch):
    argv = ["--arch", "relu_mlp", "--arch", "residual_cnn", "--backend", "tensorflow", "jax",
            "--jit", "on", "off", "--steps-per-execution", "1", "4", "--precision", "mixed",
            "--input-pipeline", "device", "iterator", "--batch-size", "64", "--repeats", "2",
            "--batch-shards", "1", "2"]  # fmt: skip
    specs, _, data = _fake_run(monkeypatch, argv)
    keys = [(b, s["arch"], s["jit"], s["steps_per_execution"], s["input_pipeline"],
             s["batch_shards"]) for b, s in specs]  # fmt: skip
    # 2 shards only where train.py runs them: TensorFlow's device pipeline.
    per_repeat = [(b, a, j, k, p, n) for a in ("relu_mlp", "residual_cnn")
                  for b in ("tensorflow", "jax") for j in ("on", "off") for k in (1, 4)
                  for p in ("device", "iterator") for n in (1, 2)
                  if n == 1 or (b, p) == ("tensorflow", "device")]  # fmt: skip
    assert keys == per_repeat * 2  # --repeats 2, each repeat measuring every setting in turn
    assert {(s["precision"], s["batch_size"]) for _, s in specs} == {("mixed", 64)}
    # Whole 60-step epochs: 300 steps by default for an MLP, 60 for a CNN.
    assert {s["arch"]: s["steps"] for _, s in specs} == {"relu_mlp": 300, "residual_cnn": 60}
    assert len(data["results"]) == len(per_repeat) and data["repeats"] == 2
    assert all(len(r["runs"]) == 2 for r in data["results"])


def test_shards_an_arch_cannot_take_are_left_out_not_the_whole_run(monkeypatch, capsys):
    """`--arch bn_mlp residual_cnn --batch-shards 1 2` was refused whole (bn_mlp's
    BatchNorm takes no shards), though the help said such settings are left out."""
    argv = ["--arch", "bn_mlp", "residual_cnn", "--backend", "tensorflow", "--batch-shards",
            "1", "2", "--repeats", "1"]  # fmt: skip
    specs, _, _ = _fake_run(monkeypatch, argv)
    assert [(s["arch"], s["batch_shards"]) for _, s in specs] == [
        ("bn_mlp", 1), ("residual_cnn", 1), ("residual_cnn", 2)]  # fmt: skip
    err = capsys.readouterr().err
    assert "bn_mlp on tensorflow, input auto: --batch-shards 2 left out: batch shards would " in err


def test_the_device_pipeline_is_skipped_on_torch_and_steps_round_up(monkeypatch):
    argv = ["--arch", "bn_mlp", "--backend", "torch", "tensorflow", "--input-pipeline",
            "device", "iterator", "--steps", "61", "--repeats", "1"]  # fmt: skip
    specs, _, _ = _fake_run(monkeypatch, argv)
    assert [(b, s["input_pipeline"]) for b, s in specs] == [
        ("torch", "iterator"), ("tensorflow", "device"), ("tensorflow", "iterator")]  # fmt: skip
    assert {s["steps"] for _, s in specs} == {120}


def test_quick_runs_one_60_step_epoch_once_per_setting_unless_told_otherwise(monkeypatch):
    argv = ["--arch", "bn_mlp", "resnet18", "--backend", "tensorflow", "--quick",
            "--compare-torch", "--torch-reference", __file__]  # fmt: skip
    specs, torch_calls, data = _fake_run(monkeypatch, argv)
    assert [(s["arch"], s["steps"]) for _, s in specs] == [("bn_mlp", 60), ("resnet18", 60)]
    assert [call[1:4] for call in torch_calls] == [("bn_mlp", 128, 60), ("resnet18", 128, 60)]
    assert data["quick"] is True and data["repeats"] == 1
    specs, _, data = _fake_run(monkeypatch, [*argv, "--repeats", "2", "--steps", "120"])
    assert [(s["arch"], s["steps"]) for _, s in specs] == [("bn_mlp", 120), ("resnet18", 120)] * 2
    _, _, data = _fake_run(monkeypatch, ["--arch", "bn_mlp", "--backend", "tensorflow"])
    assert data["quick"] is False and data["repeats"] == 2


def test_a_quick_runs_table_says_so_when_printed_again(monkeypatch, tmp_path, capsys):
    saved = tmp_path / "quick.json"
    _fake_run(monkeypatch, ["--arch", "bn_mlp", "--quick"], json_path=saved)
    assert benchmark.QUICK_NOTE in capsys.readouterr().err
    assert _cli.run(benchmark.main, ["--from-json", str(saved)]) == 0
    out, err = capsys.readouterr()
    assert "bn_mlp" in out and benchmark.QUICK_NOTE in err


def test_cpu_0_is_the_cpu_for_torch_device_checks(monkeypatch):
    """`--torch-device cpu:0` names the CPU: it needs no --compare-torch and no probe."""
    specs, torch_calls, data = _fake_run(monkeypatch, ["--torch-device", "cpu:0", "--repeats", "1"])
    assert len(specs) == 1 and torch_calls == []

    def probe(device):
        raise AssertionError(f"probed {device}")

    monkeypatch.setattr(benchmark, "_check_torch_device", probe)
    argv = ["--compare-torch", "--torch-reference", __file__, "--torch-device", "cpu:0",
            "--repeats", "1", "--json", "/dev/null"]  # fmt: skip
    assert _cli.run(benchmark.main, argv) == 0
    assert [c[-1] for c in torch_calls] == ["cpu:0"]


def test_torch_runs_after_each_arch_with_the_same_batch_steps_and_device(monkeypatch):
    argv = ["--arch", "bn_mlp", "--arch", "resnet18", "--backend", "tensorflow", "--repeats", "2",
            "--batch-size", "32", "--steps", "90", "--compare-torch", "--torch-reference",
            __file__, "--torch-device", "cuda:1"]  # fmt: skip
    _, torch_calls, data = _fake_run(monkeypatch, argv, rates=[100.0, 300.0, 200.0, 600.0],
                                     torch_rates=[10.0, 30.0, 40.0, 20.0])  # fmt: skip
    assert torch_calls == [(__file__, "bn_mlp", 32, 120, "cuda:1"),
                           (__file__, "resnet18", 32, 120, "cuda:1")] * 2  # fmt: skip
    assert data["torch"] == {"bn_mlp": [10.0, 40.0], "resnet18": [30.0, 20.0]}
    assert data["torch_device"] == "cuda:1"
    bn, resnet = data["results"]
    assert bn["torch_samples_per_s"] == 25.0 and bn["ratio_vs_torch"] == 150.0 / 25.0
    assert resnet["ratio_vs_torch"] == 450.0 / 25.0
    # torch on a GPU: no CPU matmul share for it, no CPU target (ours ran on the CPU).
    assert bn["torch_matmul_share"] is None and bn["target_ratio"] is None
    assert bn["target_matmul_share"] is None
    assert bn["matmul_share"] == pytest.approx(150.0 * 2e6 / 1e9 / 4.0)


def test_each_arch_has_its_own_cpu_target_at_batch_128(monkeypatch):
    argv = ["--arch", "resnet18", "--backend", "tensorflow", "--repeats", "1", "--compare-torch",
            "--torch-reference", __file__]  # fmt: skip
    _, _, data = _fake_run(monkeypatch, argv, rates=[60.0], torch_rates=[40.0], flops=10**9)
    (row,) = data["results"]
    assert row["target_ratio"] == 1.15 == benchmark.TORCH_RATIO_TARGETS["resnet18"]
    # torch's share (40 x 1 GFLOP of 4 GFLOP/s: 10) times the target
    assert row["torch_matmul_share"] == pytest.approx(10.0)
    assert row["target_matmul_share"] == pytest.approx(11.5)
    assert row["matmul_share"] == pytest.approx(15.0) and row["ratio_vs_torch"] == 1.5


@pytest.mark.parametrize("extra, accelerator", [(["--batch-size", "64"], False), ([], True)])
def test_targets_are_for_batch_128_on_the_cpu_only(monkeypatch, extra, accelerator):
    argv = ["--arch", "bn_mlp", "--backend", "tensorflow", "--repeats", "1", "--compare-torch",
            "--torch-reference", __file__, *extra]  # fmt: skip
    _, _, data = _fake_run(monkeypatch, argv, accelerator=accelerator)
    (row,) = data["results"]
    assert row["target_ratio"] is None and row["target_matmul_share"] is None
    assert row["ratio_vs_torch"] == 2.0
    # Work done on a GPU has no share of the CPU's matmul rate; torch's still does.
    assert (row["matmul_share"] is None) is accelerator
    assert row["torch_matmul_share"] == pytest.approx(50 * 2e6 / 1e9 / 4)


_TABLE_ROW = {  # header: (value, right-aligned); 100 samples/s, torch 60, 2 MFLOP, 4 GFLOP/s
    "arch": ("bn_mlp", False), "backend": ("tensorflow", False), "input": ("iterator", False),
    "jit": ("off", False), "xla": ("False", False), "spe": ("1", True), "sh": ("1", True),
    "train/s": ("100", True), "torch/s": ("60", True), "ratio": ("1.67", True),
    "target": ("1.60", True), "compile s": ("1.2", True), "epoch s": ("2.5", True),
    "infer/s": ("3000", True), "RSS MB": ("321", True), "%mm": ("5", True),
    "torch %mm": ("3", True), "needs %mm": ("5", True),
}  # fmt: skip


def test_the_table_puts_each_value_under_its_header_and_from_json_reprints_it(
    monkeypatch, capsys, tmp_path
):
    argv = ["--arch", "bn_mlp", "--backend", "tensorflow", "--repeats", "1", "--jit", "off",
            "--input-pipeline", "iterator", "--compare-torch", "--torch-reference", __file__]  # fmt: skip
    monkeypatch.setattr(benchmark, "_reference_archs", lambda path: ["bn_mlp"])
    saved = tmp_path / "bench.json"
    _fake_run(monkeypatch, argv, torch_rates=[60.0], json_path=saved)
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].startswith("batch size 128; float32; medians")
    header, rule, row = lines[1:4]
    assert set(rule) == {"-"} and len(rule) == len(header)
    h_end = r_end = 0
    for label, (value, right) in _TABLE_ROW.items():
        h_start = header.index(label, h_end)
        h_end = h_start + len(label)
        r_start = row.index(value, r_end)
        r_end = r_start + len(value)
        assert (r_end == h_end) if right else (r_start == h_start), (label, header, row)
    # --from-json prints the same table from the --json file, measuring nothing.
    monkeypatch.setattr(benchmark, "_run_worker", None)
    assert _cli.run(benchmark.main, ["--from-json", str(saved)]) == 0
    assert capsys.readouterr().out == table


def test_the_markdown_table_has_one_cell_per_header(monkeypatch, capsys, tmp_path):
    argv = ["--arch", "bn_mlp", "--backend", "tensorflow", "--repeats", "1", "--jit", "off",
            "--input-pipeline", "iterator", "--compare-torch", "--torch-reference", __file__,
            "--markdown"]  # fmt: skip
    monkeypatch.setattr(benchmark, "_reference_archs", lambda path: ["bn_mlp"])
    _fake_run(monkeypatch, argv, torch_rates=[60.0])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("batch size 128, float32, medians of the repeats")
    # where it was measured: the table in a document says which machine it came from
    cores = os.cpu_count()
    assert lines[0].endswith(f"; {cores} CPU cores (Fake CPU 9000), NumPy fp32 matmul 4 GFLOP/s")
    header, rule, row = lines[2:5]

    def cells(line):
        return [c.strip() for c in line.strip().strip("|").split("|")]

    assert len(cells(rule)) == len(cells(header))
    md = dict(zip(cells(header), cells(row), strict=True))
    renamed = {"xla": "XLA", "sh": "shards", "RSS MB": "peak RSS MB", "%mm": "% mm", "torch %mm": "torch % mm",
               "needs %mm": "needs % mm"}  # fmt: skip
    assert md == {renamed.get(k, k): v for k, (v, _) in _TABLE_ROW.items()}


def test_a_table_without_torch_shows_dashes(monkeypatch, capsys):
    argv = ["--arch", "bn_mlp", "--backend", "tensorflow", "--repeats", "1", "--batch-size", "32"]
    _fake_run(monkeypatch, argv)
    row = capsys.readouterr().out.splitlines()[3].split()
    # torch/s, ratio, target; then %mm 5, torch %mm, needs %mm
    assert row[8:11] == ["-", "-", "-"] and row[-3:] == ["5", "-", "-"]


def test_from_json_needs_every_field_of_the_table_in_every_row(tmp_path, capsys):
    """A file whose rows lack a field the table shows is refused in one line (it once
    passed the check when the rows held arch, backend and train_samples_per_s, and the
    table then stopped with a KeyError traceback)."""
    full = {"arch": "a", "backend": "b", "jit": "off", "jit_compile": False,
            "steps_per_execution": 1, "train_samples_per_s": 1.0, "torch_samples_per_s": None,
            "ratio_vs_torch": None, "compile_s": 1.0, "epoch_s": 1.0,
            "infer_samples_per_s": 1.0, "peak_rss_mb": 1.0, "matmul_share": None}  # fmt: skip
    cases = [
        ([{"arch": "a", "backend": "b"}], "train_samples_per_s"),
        ([{"arch": "a", "backend": "b", "train_samples_per_s": 1.0}], "compile_s"),
        ([full, {k: v for k, v in full.items() if k != "epoch_s"}], "epoch_s"),
        ([], "arch"),
    ]
    for rows, lacking in cases:
        path = tmp_path / "old.json"
        path.write_text(json.dumps({"batch_size": 128, "results": rows}))
        assert _cli.run(benchmark.main, ["--from-json", str(path)]) == 2
        err = capsys.readouterr().err
        assert "is not a benchmark.py --json file (rows lack " in err and lacking in err
        assert len(err.strip().splitlines()) == 1
    path.write_text(json.dumps({"batch_size": 128, "results": [full]}))
    assert _cli.run(benchmark.main, ["--from-json", str(path)]) == 0


def _completed(stdout="", stderr="", returncode=0):
    return subprocess.CompletedProcess([], returncode, stdout=stdout, stderr=stderr)


def test_a_worker_measures_in_a_fresh_process_on_its_backend(monkeypatch):
    from kmnist_lab.errors import KmnistLabError

    calls = []

    def run(cmd, **kw):
        calls.append((cmd, kw["env"]))
        return _completed('{"rate": 1}\nlog line\n{"rate": 2}\nbye\n')

    monkeypatch.setattr(benchmark.subprocess, "run", run)
    spec = {"arch": "bn_mlp", "steps": 60}
    assert benchmark._run_worker(spec, "jax") == {"rate": 2}  # its last JSON line
    ((cmd, env),) = calls
    assert cmd[:3] == [sys.executable, benchmark.__file__, "--worker"]
    assert json.loads(cmd[3]) == spec
    assert env["KERAS_BACKEND"] == "jax" and env["JAX_ENABLE_COMPILATION_CACHE"] == "false"
    for result in (_completed('{"rate": 1}\n', "Traceback\nOOM\n", 1), _completed("", "", 0)):
        monkeypatch.setattr(benchmark.subprocess, "run", lambda cmd, r=result, **kw: r)
        with pytest.raises(
            KmnistLabError, match="benchmark of bn_mlp on jax failed: (OOM|no output)"
        ):
            benchmark._run_worker(spec, "jax")


def test_the_torch_reference_runs_as_a_plain_script_on_the_cpu(monkeypatch):
    from kmnist_lab.errors import KmnistLabError

    calls = []
    monkeypatch.setattr(benchmark.subprocess, "run", lambda cmd, **kw: calls.append(cmd)
                        or _completed("torch bn_mlp bs=16 samples_per_s 1234.5\n"))  # fmt: skip
    assert benchmark._run_torch("ref.py", "bn_mlp", 16, 120, "cpu:0") == 1234.5
    assert benchmark._run_torch("ref.py", "bn_mlp", 16, 120, "cuda") == 1234.5
    args = ["--arch", "bn_mlp", "--batch-size", "16", "--steps", "120"]
    assert calls[0] == [sys.executable, "ref.py", *args]
    assert calls[1] == [sys.executable, "-c", benchmark._TORCH_ON_DEVICE, "cuda", "ref.py", *args]
    monkeypatch.setattr(benchmark.subprocess, "run", lambda cmd, **kw: _completed("done\n"))
    with pytest.raises(KmnistLabError, match="printed no 'samples_per_s RATE' line for bn_mlp"):
        benchmark._run_torch("ref.py", "bn_mlp", 16, 120)
    monkeypatch.setattr(benchmark.subprocess, "run", lambda cmd, **kw: _completed("", "x\nboom", 1))
    with pytest.raises(KmnistLabError, match="torch reference for bn_mlp failed: boom"):
        benchmark._run_torch("ref.py", "bn_mlp", 16, 120)
