"""benchmark.py's command-line mistakes: one line on stderr, exit code 2, and before
anything is measured (the tests fail where a measurement starts)."""

import json
import os

import _cli
import benchmark
import pytest

PUBLISHED = benchmark.ROOT / "docs" / "bench" / "cpu_run14.json"  # a --json file


@pytest.fixture
def no_measurement(monkeypatch):
    """Fails the test where benchmark.py starts measuring (the matmul rate comes first)."""
    from kmnist_lab import bench

    def measured(*args, **kwargs):
        raise AssertionError("a measurement started")

    monkeypatch.setattr(bench, "matmul_gflops", measured)
    monkeypatch.setattr(bench, "cpu_name", measured)
    monkeypatch.setattr(benchmark, "_run_worker", measured)
    monkeypatch.setattr(benchmark, "_run_torch", measured)


def _refused(argv, capsys) -> str:
    """The one stderr line of a command line refused with exit code 2."""
    assert _cli.run(benchmark.main, argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("where, why", [
    ("{tmp}/no_such_folder/sub/b.json", "folder {tmp}/no_such_folder/sub does not exist"),
    ("{tmp}", "is a folder (a file in it: {tmp}/bench.json)"),
    ("{tmp}/a_file/b.json", "{tmp}/a_file is not a folder"),
])  # fmt: skip
def test_a_json_path_that_cannot_be_written_is_refused_before_measuring(
    where, why, tmp_path, capsys, no_measurement
):
    (tmp_path / "a_file").write_text("")
    path = where.format(tmp=tmp_path)
    err = _refused(["--arch", "bn_mlp", "--quick", "--json", path], capsys)
    assert f"--json {path}: {why.format(tmp=tmp_path)}; --json takes the path of a file" in err


def test_a_json_path_in_a_read_only_folder_is_refused_before_measuring(
    tmp_path, capsys, monkeypatch, no_measurement
):
    # The tests may run as root, who may write anywhere: the folder's check is faked.
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode)
    )
    path = tmp_path / "b.json"
    err = _refused(["--arch", "bn_mlp", "--quick", "--json", str(path)], capsys)
    assert f"--json {path}: folder {tmp_path} is not writable" in err
    assert not path.exists()


def test_a_json_file_that_cannot_be_written_at_the_end_is_one_line(tmp_path, capsys, monkeypatch):
    """The folder checked at the start goes away while measuring: the write fails with
    one line, not an OSError traceback (the table is printed already)."""
    from kmnist_lab import bench

    folder = tmp_path / "out"
    folder.mkdir()

    def worker(spec, backend):
        folder.rmdir()
        return {"arch": spec["arch"], "backend": backend, "batch_size": spec["batch_size"],
                "jit": spec["jit"], "jit_compile": False, "precision": "float32",
                "accelerator": False, "input_pipeline": "iterator", "steps_per_execution": 1,
                "batch_shards": 1, "train_samples_per_s": 100.0, "compile_s": 1.0,
                "epoch_s": 1.0, "infer_samples_per_s": 100.0, "peak_rss_mb": 1.0,
                "train_flops_per_sample": None}  # fmt: skip

    monkeypatch.setattr(benchmark, "_run_worker", worker)
    monkeypatch.setattr(bench, "matmul_gflops", lambda: 4.0)
    monkeypatch.setattr(bench, "cpu_name", lambda: "Fake CPU")
    path = folder / "b.json"
    argv = ["--arch", "bn_mlp", "--backend", "tensorflow", "--repeats", "1", "--json", str(path)]
    assert _cli.run(benchmark.main, argv) == 2
    out, err = capsys.readouterr()
    assert "bn_mlp" in out and "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            f"error: cannot write --json {path}: No such file or directory; the table above has "
            "the results"
        )
    )


@pytest.mark.parametrize("extra, named", [
    (["--arch", "resnet18", "--repeats", "5"], "--arch, --repeats"),
    (["--batch-size", "128"], "--batch-size"),  # the default, given by hand, counts too
    (["--quick", "--markdown", "--compare-torch"], "--quick, --compare-torch"),
    (["--json", "{tmp}/again.json"], "--json"),
])  # fmt: skip
def test_from_json_refuses_the_options_it_would_ignore(
    extra, named, tmp_path, capsys, no_measurement
):
    argv = ["--from-json", str(PUBLISHED), *(a.format(tmp=tmp_path) for a in extra)]
    err = _refused(argv, capsys)
    assert (
        f"--from-json measures nothing, it prints the table of {PUBLISHED}: it takes no "
        f"{named} (only --markdown)"
    ) in err
    assert not (tmp_path / "again.json").exists()


def test_from_json_takes_markdown(capsys, no_measurement):
    assert _cli.run(benchmark.main, ["--markdown", "--from-json", str(PUBLISHED)]) == 0
    assert "| arch | backend |" in capsys.readouterr().out
    assert "option but --markdown" in benchmark.build_parser().format_help()


@pytest.mark.parametrize("content, lacking", [
    ({"foo": 1}, 'no "results" list'),
    ({"results": {"arch": "bn_mlp"}}, '"results" is a JSON object, not a list of rows'),
    ({"results": [1, 2], "batch_size": 128}, "a row of its results is a JSON number"),
    ({"results": []}, 'no "batch_size"'),
    ({"results": [], "batch_size": 128, "machine": [4]}, '"machine" is a JSON array'),
])  # fmt: skip
def test_from_json_of_another_shape_says_what_it_lacks(
    content, lacking, tmp_path, capsys, no_measurement
):
    path = tmp_path / "other.json"
    path.write_text(json.dumps(content))
    err = _refused(["--from-json", str(path)], capsys)
    assert f"{path} is not a benchmark.py --json file ({lacking}" in err
    assert "'results'" not in err  # not a KeyError's text


def test_from_json_of_a_json_array_says_what_it_holds(tmp_path, capsys, no_measurement):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    err = _refused(["--from-json", str(path)], capsys)
    assert (
        f"cannot read benchmark results {path}: it holds a JSON array, not the object with "
        'a "results" list that benchmark.py --json writes'
    ) in err


@pytest.mark.parametrize("where, why", [("{tmp}/missing.py", "does not exist"),
                                        ("{tmp}", "is a folder")])  # fmt: skip
def test_compare_torch_says_the_reference_is_missing(where, why, tmp_path, capsys, no_measurement):
    path = where.format(tmp=tmp_path)
    err = _refused(["--compare-torch", "--torch-reference", path], capsys)
    assert (
        f"--torch-reference {path} {why}: --compare-torch needs a PyTorch reference script, "
        "such as scripts/torch_reference.py"
    ) in err


def test_an_atomic_write_to_a_device_writes_into_it_and_keeps_it(tmp_path):
    """`--json /dev/null` (or any device or pipe) is written into: the atomic write's
    rename once put a regular file in /dev/null's place when the tests ran as root. The
    check goes through a link to /dev/null, so a regression replaces the link, not the
    device."""
    from kmnist_lab import runs

    link = tmp_path / "null"
    link.symlink_to("/dev/null")
    runs.atomic_write_json(link, {"results": []})
    assert link.is_symlink() and link.is_char_device()
    benchmark._check_json_path(str(link))  # a writable device is a valid --json path
    regular = tmp_path / "b.json"
    regular.write_text("{}")
    inode = regular.stat().st_ino
    runs.atomic_write_json(regular, {"a": 1})  # a regular file is still replaced atomically
    assert regular.stat().st_ino != inode and json.loads(regular.read_text()) == {"a": 1}
    to_file = tmp_path / "to_file"  # `/dev/stdout` redirected to a file is such a link
    to_file.symlink_to(regular)
    runs.atomic_write_json(to_file, {"b": 2})
    assert to_file.is_symlink() and json.loads(regular.read_text()) == {"b": 2}


def test_a_device_that_cannot_be_written_is_refused(monkeypatch, capsys, no_measurement):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    err = _refused(["--arch", "bn_mlp", "--quick", "--json", "/dev/null"], capsys)
    assert "--json /dev/null: is not writable; --json takes the path of a file" in err


def test_torch_reference_without_compare_torch_is_refused(capsys, no_measurement):
    """As --torch-device: a reference that no comparison runs would be ignored."""
    err = _refused(["--arch", "bn_mlp", "--quick", "--torch-reference", __file__], capsys)
    assert f"--torch-reference {__file__} needs --compare-torch" in err


@pytest.mark.parametrize("edit, said", [
    (lambda d: d["results"][0].update(train_samples_per_s=None),
     'row 0 has "train_samples_per_s": a number, not a JSON null'),
    (lambda d: d["results"][0].update(arch=3), 'row 0 has "arch": text, not a JSON number'),
    (lambda d: d["results"][0].update(ratio_vs_torch="1.2"),
     'row 0 has "ratio_vs_torch": a number, not a JSON string'),
    (lambda d: d["machine"].update(matmul_gflops=None),
     '"machine" has "matmul_gflops": a number, not a JSON null'),
])  # fmt: skip
def test_from_json_of_a_value_its_table_cannot_show_names_it(edit, said, tmp_path, capsys):
    """Before, such a value ended in a formatting traceback (`NoneType.__format__`)."""
    saved = json.loads(PUBLISHED.read_text())
    edit(saved)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(saved))
    err = _refused(["--from-json", str(path)], capsys)
    assert f"{path} is not a benchmark.py --json file ({said})" in err


def test_from_json_shows_a_missing_optional_number_as_a_dash(tmp_path, capsys):
    saved = json.loads(PUBLISHED.read_text())
    saved["results"][0]["ratio_vs_torch"] = None
    path = tmp_path / "b.json"
    path.write_text(json.dumps(saved))
    assert _cli.run(benchmark.main, ["--from-json", str(path), "--markdown"]) == 0
    first = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| bn_mlp")][0]
    assert first.split(" | ")[9] == "-"
