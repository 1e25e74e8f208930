"""The scripts' filter of TensorFlow's start-up lines (scripts/_native_logs.py)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import _native_logs
import pytest
from _native_logs import filter_lines

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

# What TensorFlow 2.21 printed on the project's CPU machine (ids shortened).
PREAMBLE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
)
ONEDNN = "I0000 00:00:1795522495.152866   30382 port.cc:153] oneDNN custom operations are on.\n"
NO_DRIVER = (
    "I0000 00:00:1795522495.153276   30382 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.\n"
)
CUINIT = (
    "E0000 00:00:1795522499.337414   30382 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
WARNING = "W0000 00:00:1795522499.4   30382 cpu_allocator_impl.cc:83] Allocation exceeds 10%\n"
ERROR = "E0000 00:00:1795522499.5   30382 util.cc:131] some other error\n"
FATAL = "F0000 00:00:1795522499.6   30382 check.cc:9] Check failed: x\n"
PYTHON = "/usr/lib/python3/some.py:3: DeprecationWarning: old\n"
STARTUP = PREAMBLE + ONEDNN + NO_DRIVER + PYTHON + WARNING + CUINIT + ERROR + FATAL


def test_level_2_drops_info_warnings_preamble_and_cuinit_without_a_driver():
    assert filter_lines(STARTUP, 2) == PYTHON + ERROR + FATAL


def test_level_1_keeps_warnings_and_level_3_drops_errors_but_not_fatal_ones():
    assert filter_lines(STARTUP, 1) == PYTHON + WARNING + ERROR + FATAL
    assert filter_lines(STARTUP, 3) == PYTHON + FATAL


def test_level_0_keeps_everything():
    assert filter_lines(STARTUP, 0) == STARTUP


def test_cuinit_failure_is_kept_where_a_driver_was_found():
    # With a driver, CUDA failing to start is a real error (a broken install, no GPU
    # visible to the container): it stays.
    text = PREAMBLE + ONEDNN + CUINIT
    assert filter_lines(text, 2) == CUINIT


def test_lines_that_are_not_log_lines_and_a_last_line_without_newline_are_kept():
    text = ONEDNN + "Traceback (most recent call last):\n  File 'x'\nImportError: boom"
    assert (
        filter_lines(text, 2) == "Traceback (most recent call last):\n  File 'x'\nImportError: boom"
    )


def _run(code: str, level: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = level
    prologue = f"import sys; sys.path.insert(0, {str(SCRIPTS)!r}); import _native_logs\n"
    return subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(code)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def test_filtered_stderr_writes_back_what_the_level_lets_through_in_order():
    # Native writes to file descriptor 2 and Python's own stderr, interleaved.
    code = f"""
        import os
        with _native_logs.filtered_stderr(2):
            os.write(2, {PREAMBLE + ONEDNN!r}.encode())
            print("python line", file=sys.stderr)
            os.write(2, {ERROR!r}.encode())
        print("after", file=sys.stderr)
    """
    out = _run(code, "2")
    assert out.returncode == 0, out.stderr
    assert out.stderr == "python line\n" + ERROR + "after\n"


def test_filtered_stderr_writes_back_when_the_block_raises():
    out = _run(
        """
        import os
        with _native_logs.filtered_stderr(2):
            os.write(2, b"kept before the error\\n")
            raise SystemExit(5)
        """,
        "2",
    )
    assert out.returncode == 5 and out.stderr == "kept before the error\n"


def test_the_first_tensorflow_import_is_filtered_and_its_runtime_not_started():
    """A fresh process: `import tensorflow` under the filter prints none of its
    start-up lines at the scripts' level 2, and TensorFlow's threads can still be set
    afterwards (batch shards need that: kmnist_lab.speed.configure_batch_shards). A
    check of whether TensorFlow is installed (`find_spec`) before the import does not
    use the filter up."""
    pytest.importorskip("tensorflow")
    code = """
        import importlib.util
        assert _native_logs.quiet_tensorflow_start()
        assert importlib.util.find_spec("tensorflow").name == "tensorflow"
        import tensorflow as tf
        assert not _native_logs.quiet_tensorflow_start()  # once per process
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(2)
        print(float(tf.reduce_sum(tf.ones(3))), tf.config.threading.get_intra_op_parallelism_threads())
    """
    quiet = _run(code, "2")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split() == ["3.0", "1"]
    assert "absl::InitializeLog" not in quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if line[:1] in "IWE" and "] " in line]
    # At level 0 the filter is off, and TensorFlow prints its start-up lines itself.
    loud = _run("assert not _native_logs.quiet_tensorflow_start()\nimport tensorflow", "0")
    assert loud.returncode == 0 and "absl::InitializeLog" in loud.stderr


def test_the_filter_stays_off_for_verbose_logs_and_once_tensorflow_is_loaded(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("TF_CPP_MAX_VLOG_LEVEL", "1")
    assert not _native_logs.quiet_tensorflow_start()
    monkeypatch.delenv("TF_CPP_MAX_VLOG_LEVEL")
    monkeypatch.setitem(sys.modules, "tensorflow", object())
    assert not _native_logs.quiet_tensorflow_start()
    assert not any(type(f).__name__ == "_FirstTensorFlowImport" for f in sys.meta_path)


def test_filtered_stderr_holds_nothing_without_a_file_descriptor_2():
    out = _run(
        """
        import os
        os.close(2)
        with _native_logs.filtered_stderr(2):
            print("ran", flush=True)
        """,
        "2",
    )
    assert out.returncode == 0 and out.stdout == "ran\n"


def test_the_wrapped_loader_answers_as_tensorflows_own_and_can_be_copied():
    # Regression: `copy.copy` of the wrapper recursed through __getattr__ before its
    # own attributes were set. A fresh process: here TensorFlow is imported already.
    pytest.importorskip("tensorflow")
    code = """
        import copy, importlib.util
        assert _native_logs.quiet_tensorflow_start()
        loader = importlib.util.find_spec("tensorflow").loader
        assert type(loader).__name__ == "_FilteredLoader"
        assert loader.is_package("tensorflow")
        assert loader.get_filename("tensorflow").endswith("__init__.py")
        assert type(copy.copy(loader)).__name__ == "_FilteredLoader"
        print("ok")
    """
    out = _run(code, "2")
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr[-2000:]
