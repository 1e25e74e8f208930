"""The benchmark's JSON schema on a tiny run (no timing assertions: timing is for the benchmark)."""

import json
import subprocess
import sys

import _cli
import benchmark
import pytest


def test_benchmark_json_schema(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--arch", "plain_mlp", "--batch-size", "32", "--steps", "3", "--repeats", "1",
            "--backend", "tensorflow", "--jit", "off", "--json", str(out)]  # fmt: skip
    assert _cli.run(benchmark.main, argv) == 0
    table = capsys.readouterr().out
    assert "plain_mlp" in table and "train/s" in table
    data = json.loads(out.read_text())
    assert data["schema"] == 1 and data["machine"]["matmul_gflops"] > 0
    assert data["torch_device"] == "cpu"
    (row,) = data["results"]
    expected = {"arch", "backend", "batch_size", "jit", "jit_compile", "steps_per_execution",
                "train_samples_per_s", "compile_s", "epoch_s", "infer_samples_per_s", "peak_rss_mb",
                "torch_samples_per_s", "ratio_vs_torch", "matmul_share", "runs",
                "train_flops_per_sample", "precision", "torch_matmul_share", "target_ratio",
                "target_matmul_share", "accelerator"}  # fmt: skip
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
    (["--arch", "vgg"], "unknown arch 'vgg'"),
    (["--compare-torch", "--torch-reference", "/nope.py"], "--compare-torch needs"),
    (["--backend", "torch", "--input-pipeline", "device"],
     "device needs the jax or tensorflow backend; bn_mlp would run on torch"),
    (["--backend", "torch", "--steps-per-execution", "10"], "torch backend runs one step"),
    (["--arch", "relu_mlp", "--compare-torch", "--torch-reference", "{ref}"],
     "reference {ref} has no 'relu_mlp'. It has: bn_mlp"),
    (["--from-json", "{list}"], "cannot read benchmark results"),
    (["--compare-torch", "--torch-device", "nosuch"], "--torch-device 'nosuch': PyTorch cannot"),
    (["--torch-device", "cuda"], "--torch-device cuda needs --compare-torch"),
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


def test_the_torch_reference_runs_off_the_cpu_through_the_device_launcher():
    # `--torch-device` runs the unmodified reference under a launcher that sets torch's
    # default device (and, for CUDA, times the GPU's work). The meta device runs it here:
    # the model, data and steps are shapes only, but the launcher's whole path runs.
    ref = str(benchmark.DEFAULT_TORCH_REFERENCE)
    assert benchmark._run_torch(ref, "bn_mlp", 8, 3, "meta") > 0
    assert benchmark._run_torch(ref, "bn_mlp", 8, 3, "cpu") > 0  # the script as it is


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


def test_the_device_launcher_runs_a_reference_as_python_would(tmp_path):
    # `python ref.py` puts ref.py's folder first on sys.path, so a reference may import
    # a module beside it; the launcher must too, and the CPU path runs it directly.
    (tmp_path / "helper_mod.py").write_text("RATE = 123\n")
    (tmp_path / "ref.py").write_text(
        "import helper_mod\nprint(f'torch x bs=1 samples_per_s {helper_mod.RATE}')\n"
    )
    assert benchmark._run_torch(str(tmp_path / "ref.py"), "x", 1, 1, "cpu") == 123
    assert benchmark._run_torch(str(tmp_path / "ref.py"), "x", 1, 1, "meta") == 123
    # and `--compare-torch` reads its ARCHS the same way before running it
    (tmp_path / "ref.py").write_text("from helper_mod import RATE\nARCHS = {'x': RATE}\n")
    assert benchmark._reference_archs(tmp_path / "ref.py") == ["x"]
    assert str(tmp_path) not in sys.path


def test_the_published_gpu_results_print_as_tables(capsys):
    # docs/performance.md's H100 tables come from these files; --from-json reprints them.
    files = sorted((benchmark.ROOT / "docs" / "bench").glob("*.json"))
    assert files
    for path in files:
        assert _cli.run(benchmark.main, ["--from-json", str(path), "--markdown"]) == 0
        table = capsys.readouterr().out
        assert "on a GPU/TPU" in table and "| resnet18 | jax |" in table


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
