"""Property tests (hypothesis): readers only ever raise `DataError`; losses stay finite.

The dataset readers face bytes from the outside world: random bytes, truncated
files, flipped bits, forged headers, arrays of any dtype and shape. Whatever they
get, they return well-formed arrays or raise the documented `DataError` (which the
scripts turn into one line and exit code 2), never another exception.
`tests/test_losses.py` already checks every loss with its default parameters at
extreme logits; here the parameters are random too.
"""

from __future__ import annotations

import gzip
import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import idx_bytes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kmnist_lab import data
from kmnist_lab.errors import DataError
from kmnist_lab.losses import get_loss, list_losses, loss_head

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IDX_NAMES = tuple(data.IDX_FILES.values())


def _valid_idx(draw_shape):
    return idx_bytes(np.arange(int(np.prod(draw_shape)), dtype=np.uint8).reshape(draw_shape))


def _check_idx_result(raw: bytes, result: np.ndarray) -> None:
    """A parsed IDX array is uint8, has the header's shape and exactly the file's data."""
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    assert result.dtype == np.uint8 and result.shape == shape
    assert result.tobytes() == raw[4 + 4 * ndim :]


# ----------------------------------------------------------------------------- IDX


@SETTINGS
@given(raw=st.binary(max_size=300))
@example(raw=b"")
@example(raw=b"\x00\x00\x08")
@example(raw=b"\x00\x00\x08\x00")  # zero dimensions
@example(raw=b"\x00\x00\x08\x02" + (2**32 - 1).to_bytes(4, "big") * 2)  # 16 EiB claimed
@example(raw=b"\x00\x00\x08\x02" + (2**32 - 1).to_bytes(4, "big") + b"\x00" * 4)  # 0 x huge
@example(raw=b"\x00\x00\x08\x04" + (2**16).to_bytes(4, "big") * 4)  # 2**64: int64 overflow
def test_parse_idx_random_bytes_give_array_or_data_error(raw):
    try:
        result = data.parse_idx(raw, "random")
    except DataError as e:
        assert "random" in str(e)
        return
    _check_idx_result(raw, result)


@SETTINGS
@given(
    shape=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    cut=st.integers(0, 10_000),
)
def test_parse_idx_truncated_file_is_data_error(shape, cut):
    raw = _valid_idx(shape)
    cut = cut % (len(raw) + 1)
    truncated = raw[:cut]
    if cut == len(raw):
        _check_idx_result(raw, data.parse_idx(truncated))
        return
    with pytest.raises(DataError, match="IDX|truncated"):
        data.parse_idx(truncated)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    position=st.integers(0, 10_000),
    value=st.integers(0, 255),
    extra=st.binary(max_size=8),
)
def test_parse_idx_corrupted_file_gives_array_or_data_error(shape, position, value, extra):
    raw = bytearray(_valid_idx(shape) + extra)
    raw[position % len(raw)] = value
    try:
        result = data.parse_idx(bytes(raw))
    except DataError:
        return
    _check_idx_result(bytes(raw), result)


# ----------------------------------------------------------------------------- gzip


def _read_gz(payload: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train-images-idx3-ubyte.gz"
        path.write_bytes(payload)
        return data._read_bytes(path)


@SETTINGS
@given(payload=st.binary(max_size=200))
@example(payload=b"\x1f\x8b")  # gzip magic, nothing else
@example(payload=b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xff\xff\xff")
def test_random_gz_bytes_give_bytes_or_data_error(payload):
    try:
        assert isinstance(_read_gz(payload), bytes)
    except DataError as e:
        assert "Re-download or replace" in str(e)


@SETTINGS
@given(
    content=st.binary(min_size=1, max_size=400),
    cut=st.integers(0, 10_000),
    flip=st.integers(0, 10_000),
    value=st.integers(0, 255),
)
def test_truncated_or_corrupted_gz_gives_bytes_or_data_error(content, cut, flip, value):
    packed = gzip.compress(content)
    for damaged in (packed[: cut % len(packed)], _replace(packed, flip, value)):
        try:
            out = _read_gz(damaged)
        except DataError:
            continue
        assert isinstance(out, bytes)


def _replace(raw: bytes, position: int, value: int) -> bytes:
    raw = bytearray(raw)
    raw[position % len(raw)] = value
    return bytes(raw)


# ----------------------------------------------------------------------------- folders


def _check_dataset(found) -> None:
    """What `read_directory` returns: uint8 (N, 28, 28) images with as many int64 labels."""
    assert found is not None
    splits, files = found
    for x, y in splits.values():
        assert x.dtype == np.uint8 and x.ndim == 3 and x.shape[1:] == (28, 28)
        assert y.dtype == np.int64 and y.shape == (len(x),)
    assert all(len(digest) == 64 for digest in files.values())


def _good_idx_files(n=3) -> dict[str, bytes]:
    x = np.arange(n * 28 * 28, dtype=np.uint8).reshape(n, 28, 28)
    y = np.arange(n, dtype=np.uint8) % 10
    arrays = dict(zip(IDX_NAMES, (x, y, x, y), strict=True))
    return {name: idx_bytes(a) for name, a in arrays.items()}


def _read_folder(files: dict[str, bytes], name="kmnist"):
    with tempfile.TemporaryDirectory() as tmp:
        for filename, payload in files.items():
            (Path(tmp) / filename).write_bytes(payload)
        return data.read_directory(name, Path(tmp))


@SETTINGS
@given(
    victim=st.sampled_from(IDX_NAMES),
    mode=st.sampled_from(["random", "truncate", "flip", "gzip-truncate", "missing"]),
    payload=st.binary(max_size=120),
    position=st.integers(0, 10_000),
    value=st.integers(0, 255),
)
def test_idx_folder_with_one_damaged_file_gives_dataset_or_data_error(
    victim, mode, payload, position, value
):
    files = _good_idx_files()
    good = files[victim]
    if mode == "random":
        files[victim] = payload
    elif mode == "truncate":
        files[victim] = good[: position % len(good)]
    elif mode == "flip":
        files[victim] = _replace(good, position, value)
    elif mode == "gzip-truncate":
        packed = gzip.compress(good)
        del files[victim]
        files[victim + ".gz"] = packed[: position % len(packed)]
    else:
        del files[victim]
    try:
        found = _read_folder(files)
    except DataError:
        return
    _check_dataset(found)


# ----------------------------------------------------------------------------- npz


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _good_npz() -> bytes:
    x = np.zeros((4, 28, 28), np.uint8)
    return _npz_bytes({"x_train": x, "y_train": np.arange(4), "x_test": x, "y_test": np.arange(4)})


@SETTINGS
@given(
    payload=st.binary(max_size=300),
    cut=st.integers(0, 100_000),
    position=st.integers(0, 100_000),
    value=st.integers(0, 255),
)
@example(payload=b"PK\x03\x04", cut=0, position=0, value=0)
@example(payload=b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'}", cut=0, position=0, value=0)
def test_npz_random_truncated_or_corrupted_gives_dataset_or_data_error(
    payload, cut, position, value
):
    good = _good_npz()
    for damaged in (payload, good[: cut % len(good)], _replace(good, position, value)):
        try:
            found = _read_folder({"kmnist.npz": damaged})
        except DataError:
            continue
        _check_dataset(found)


_DTYPES = st.sampled_from(
    ["uint8", "int8", "int64", "uint64", "float16", "float32", "float64", "bool", "complex64",
     "U1", "S2", "datetime64[s]"]
)  # fmt: skip


@st.composite
def _any_array(draw, shapes=None):
    """Arrays of any dtype (NaN, inf, huge, negative, complex, strings, dates) and shape."""
    dtype = np.dtype(draw(_DTYPES))
    shape = draw(
        st.sampled_from(
            shapes
            or [
                (3, 28, 28),
                (3, 784),
                (3, 28, 28, 1),
                (3, 28, 28, 3),
                (3, 32, 32),
                (3,),
                (2,),
                (),
                (0, 28, 28),
                (3, 1),
            ]
        )  # fmt: skip
    )
    if dtype.kind in "USM":
        return np.zeros(shape, dtype)
    return draw(hnp.arrays(dtype, shape))


_IMAGES = _any_array(shapes=[(3, 28, 28), (3, 784), (3, 28, 28, 1), (3, 32, 32), (3,)])
_LABELS = _any_array(shapes=[(3,), (3, 1), (2,), ()])


def _check_same_values(found, x_in, y_in) -> None:
    """A dataset read back holds the stored values: pixels within rounding, labels exact."""
    x, y = found[0]["train"]
    assert np.all(np.abs(x.reshape(len(x), -1) - np.asarray(x_in).reshape(len(x), -1)) < 1)
    assert np.array_equal(y, np.asarray(y_in).reshape(-1))


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int64", "float32", "float64"])
@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 784), (3, 28, 28, 1)])
def test_valid_arrays_are_accepted_by_both_readers(dtype, shape):
    """The counterpart of the "dataset or DataError" properties below: a reader that
    refused everything would pass those, not this."""
    x = np.random.default_rng(0).integers(0, 256, size=shape).astype(dtype)
    x.reshape(-1)[0] = 255  # not mistakable for images scaled to [0, 1]
    y = np.array([0, 1, 2])
    found = _read_folder({"kmnist.npz": _npz_bytes({"x_train": x, "y_train": y, "x_test": x,
                                                    "y_test": y})})  # fmt: skip
    _check_dataset(found)
    _check_same_values(found, x, y)
    ds = data.from_arrays(x, y, x, y, val_fraction=0.0)
    np.testing.assert_array_equal(ds.test[0].reshape(3, -1), x.reshape(3, -1))


@SETTINGS
@given(x_train=_IMAGES, y_train=_LABELS, x_test=_any_array(), y_test=_any_array())
def test_npz_with_arrays_of_any_dtype_and_shape_gives_dataset_or_data_error(
    x_train, y_train, x_test, y_test
):
    payload = _npz_bytes({"x_train": x_train, "y_train": y_train, "x_test": x_test,
                          "y_test": y_test})  # fmt: skip
    try:
        found = _read_folder({"kmnist.npz": payload})
    except DataError:
        return
    _check_dataset(found)
    _check_same_values(found, x_train, y_train)


@SETTINGS
@given(x_train=_IMAGES, y_train=_LABELS)
def test_npz_train_split_of_any_dtype_is_read_faithfully_or_refused(x_train, y_train):
    good_x, good_y = np.zeros((2, 28, 28), np.uint8), np.arange(2)
    payload = _npz_bytes({"x_train": x_train, "y_train": y_train, "x_test": good_x,
                          "y_test": good_y})  # fmt: skip
    try:
        found = _read_folder({"kmnist.npz": payload})
    except DataError:
        return
    _check_dataset(found)
    _check_same_values(found, x_train, y_train)


@SETTINGS
@given(arrays=st.lists(_any_array(), min_size=4, max_size=4), drop=st.integers(0, 4))
def test_kuzushiji_npz_files_give_dataset_or_data_error(arrays, drop):
    files = {name: _npz_bytes({"arr_0": a}) for name, a in zip(data.KMNIST_NPZ.values(), arrays,
                                                                 strict=True)}  # fmt: skip
    if drop < 4:
        del files[list(files)[drop]]
    try:
        found = _read_folder(files)
    except DataError:
        return
    _check_dataset(found)


@SETTINGS
@given(x=_any_array(), y=_any_array())
def test_from_arrays_gives_dataset_or_data_error(x, y):
    try:
        ds = data.from_arrays(x, y, x, y, val_fraction=0.5)
    except DataError:
        return
    for xs, ys in (ds.train, ds.val, ds.test):
        assert xs.dtype == np.uint8 and xs.shape[1:] == (28, 28) and len(xs) == len(ys)


def test_zip_whose_members_are_not_npy_is_data_error(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            z.writestr(f"{key}.npy", b"not an npy")
    (tmp_path / "kmnist.npz").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="images must be"):  # numpy returns such members as bytes
        data.read_directory("kmnist", tmp_path)


# ----------------------------------------------------------------------------- losses


_LOSS_PARAMS = {
    "focal": st.fixed_dictionaries({"gamma": st.floats(0, 10), "alpha": st.floats(1e-3, 10)}),
    "am_softmax": st.fixed_dictionaries(
        {"scale": st.floats(1e-2, 100), "margin": st.floats(0, 0.99)}
    ),
    "arm_softmax": st.fixed_dictionaries(
        {"scale": st.floats(1e-2, 100), "margin": st.floats(0, 0.99)}
    ),
    "hinge": st.fixed_dictionaries(
        {"delta": st.floats(0, 50), "mode": st.sampled_from(["weston_watkins", "crammer_singer"])}
    ),
    "kld": st.fixed_dictionaries({"label_smoothing": st.floats(0, 1)}),
}


@pytest.mark.parametrize("name", list_losses())
@settings(max_examples=20, deadline=None)
@given(
    data_=st.data(),
    logits=hnp.arrays(
        np.float32, (4, 10), elements=st.floats(-1e4, 1e4, width=32) | st.sampled_from([-1e4, 1e4])
    ),
    labels=hnp.arrays(np.int64, 4, elements=st.integers(0, 9)),
)
def test_every_loss_with_random_parameters_is_finite_for_logits_up_to_1e4(
    name, data_, logits, labels
):
    params = data_.draw(_LOSS_PARAMS.get(name, st.just({})), label="params")
    loss = get_loss(name, reduction="sum", **params)
    y_true = logits[:, :1] * 0.5 if loss_head(name) == "regression" else labels
    if loss_head(name) == "cosine":  # a cosine head's outputs, and unbounded scores as well
        inputs = [np.tanh(logits / 1e3).astype("float32"), logits]
    else:
        inputs = [logits]
    for y_pred in inputs:
        value, grad = _value_and_grad(lambda p, loss=loss: loss(y_true, p), y_pred)
        assert np.isfinite(value), (name, params, value)
        assert np.all(np.isfinite(grad)), (name, params)


def _value_and_grad(fn, x):
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
    return float(value), np.asarray(tape.gradient(value, x))
