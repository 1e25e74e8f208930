"""The benchmark's JSON schema on a tiny run (no timing assertions: timing is for the benchmark)."""

import json

import _cli
import benchmark
import pytest


def test_benchmark_json_schema(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--arch", "plain_mlp", "--batch-size", "32", "--steps", "3", "--repeats", "1",
            "--jit", "off", "--json", str(out)]  # fmt: skip
    assert _cli.run(benchmark.main, argv) == 0
    table = capsys.readouterr().out
    assert "plain_mlp" in table and "train/s" in table
    data = json.loads(out.read_text())
    assert data["schema"] == 1 and data["machine"]["matmul_gflops"] > 0
    (row,) = data["results"]
    expected = {"arch", "backend", "batch_size", "jit", "jit_compile", "steps_per_execution",
                "train_samples_per_s", "compile_s", "epoch_s", "infer_samples_per_s", "peak_rss_mb",
                "torch_samples_per_s", "ratio_vs_torch", "matmul_share", "runs"}  # fmt: skip
    assert expected <= set(row)
    assert row["arch"] == "plain_mlp" and row["jit_compile"] is False and row["batch_size"] == 32
    assert (
        row["train_samples_per_s"] > 0
        and row["peak_rss_mb"] > 0
        and row["torch_samples_per_s"] is None
    )


@pytest.mark.parametrize("argv, match", [(["--arch", "vgg"], "unknown arch 'vgg'"),
                                         (["--compare-torch", "--torch-reference", "/nope.py"], "--compare-torch needs")])  # fmt: skip
def test_benchmark_bad_input(argv, match, capsys):
    assert _cli.run(benchmark.main, argv) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
