"""CIFAR-100 from a local official copy, from tfds, or from keras.datasets.

Three sources give the same `LabeledImages` (uint8 NHWC images, `"fine"`
and `"coarse"` int32 labels, class names):

* `load_cifar100(data_dir, split)` reads the official *python version*:
  the extracted `cifar-100-python/` folder, the `cifar-100-python.tar.gz`
  archive, or a parent folder holding either.  Every file is checked
  against the official MD5 sums before it is unpickled (a wrong or
  truncated file raises `ChecksumError` naming the file, the expected and
  the actual sum), and only NumPy arrays, lists, dicts and bytes may be
  unpickled.  No TensorFlow is involved.
* `load_cifar100_tfds(data_dir, split)` reads a *prepared*
  tensorflow-datasets folder with `tfds.load(..., download=False)`; it never
  downloads.  `prepare_tfds_cifar100(data_dir, source)` prepares that folder
  offline from the local python copy (or from the official
  `cifar-100-binary.tar.gz` through tfds' own `manual_dir` mechanism).
* `load_cifar100_keras(split)` calls `keras.datasets.cifar100.load_data`,
  which downloads the archive on machines that are online.
"""

import codecs
import collections
import functools
import io
import os
import pathlib
import pickle
import tarfile
import threading

import numpy as np

from keras_semkd.data import checksums
from keras_semkd.data import paths
from keras_semkd.data.arrays import LabeledImages

CIFAR100_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
    "archive": "eb9058c3a382ffc7106e4002c42a8d85",
}
CIFAR100_SIZES = {"train": 50000, "test": 10000}
SPLITS = ("train", "test")

FINE_LABEL_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee",
    "beetle", "bicycle", "bottle", "bowl", "boy", "bridge", "bus",
    "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab",
    "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree",
    "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit",
    "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark",
    "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel",
    "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
COARSE_LABEL_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers",
    "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals",
    "non-insect_invertebrates", "people", "reptiles", "small_mammals",
    "trees", "vehicles_1", "vehicles_2",
)

_IMAGE_BYTES = 32 * 32 * 3
_MD5_HINT = (
    "Re-copy the official CIFAR-100 python version "
    "(https://www.cs.toronto.edu/~kriz/cifar.html), or pass "
    "md5_table=... / verify=False for a deliberately different copy."
)

# ---------------------------------------------------------------------------
# Locating the copy
# ---------------------------------------------------------------------------

CifarLocation = collections.namedtuple("CifarLocation", ["kind", "path"])


def _is_cifar_folder(path):
    return all((path / name).is_file() for name in ("train", "test", "meta"))


def _is_archive(path):
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz"))


def resolve_cifar100(data_dir=None):
    """Finds the CIFAR-100 python copy under `data_dir`.

    Accepts the extracted `cifar-100-python/` folder, the
    `cifar-100-python.tar.gz` archive, or a folder holding either (the
    extracted folder is preferred).  `None` uses `default_cifar100_dir()`.

    Returns:
        `CifarLocation(kind, path)` with kind `"folder"` or `"archive"`.

    Raises:
        FileNotFoundError: naming the path and how to provide the data.
    """
    if data_dir is None:
        found = paths.default_cifar100_dir()
        if found is None:
            raise FileNotFoundError(
                "No local CIFAR-100 copy found. "
                + paths.how_to_provide_data(
                    "cifar-100-python/ or cifar-100-python.tar.gz")
            )
        data_dir = found
    path = pathlib.Path(os.fspath(data_dir)).expanduser()
    if _is_archive(path):
        return CifarLocation("archive", path)
    if path.is_dir():
        if _is_cifar_folder(path):
            return CifarLocation("folder", path)
        if _is_cifar_folder(path / paths.CIFAR100_FOLDER):
            return CifarLocation("folder", path / paths.CIFAR100_FOLDER)
        if _is_archive(path / paths.CIFAR100_ARCHIVE):
            return CifarLocation("archive", path / paths.CIFAR100_ARCHIVE)
        present = [n for n in ("train", "test", "meta") if (path / n).exists()]
        if present:
            missing = sorted({"train", "test", "meta"} - set(present))
            raise FileNotFoundError(
                f"Incomplete CIFAR-100 copy in {path}: missing {missing}. "
                + paths.how_to_provide_data("CIFAR-100")
            )
        raise FileNotFoundError(
            f"{path} holds no CIFAR-100 python copy: expected the files "
            f"train, test and meta, a {paths.CIFAR100_FOLDER}/ folder with "
            f"them, or {paths.CIFAR100_ARCHIVE}. "
            + paths.how_to_provide_data("CIFAR-100")
        )
    raise FileNotFoundError(
        f"CIFAR-100 data directory {path} does not exist. "
        + paths.how_to_provide_data("CIFAR-100")
    )


# ---------------------------------------------------------------------------
# Parsing the official pickles
# ---------------------------------------------------------------------------


def _numpy_reconstruct():
    try:
        from numpy._core import multiarray  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray
    return multiarray._reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays, nothing executable."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        # How protocol-2 pickles written by Python 3 encode `bytes`.
        ("_codecs", "encode"): lambda: codecs.encode,
    }

    def find_class(self, module, name):
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(
                f"Refusing to unpickle {module}.{name}: a CIFAR file only "
                "holds NumPy arrays, lists, dicts and bytes."
            )
        return factory()


def _unpickle(raw, path):
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(
            f"Could not unpickle {path} ({len(raw):,} bytes) as a CIFAR-100 "
            f"python-version file: {type(e).__name__}: {e}"
        ) from e


def _get(d, key, path):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise ValueError(
        f"{path} is not a CIFAR-100 python-version file: key {key!r} is "
        f"missing (found keys: {sorted(map(repr, d))})."
    )


def _parse_batch(raw, path):
    d = _unpickle(raw, path)
    if not isinstance(d, dict):
        raise ValueError(f"{path} does not hold a dict (got {type(d)}).")
    data = np.asarray(_get(d, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{path}: 'data' must be an (N, 3072) uint8 array. "
            f"Received: dtype={data.dtype}, shape={data.shape}"
        )
    n = data.shape[0]
    labels = {}
    for kind, num in (("fine", 100), ("coarse", 20)):
        lab = np.asarray(_get(d, f"{kind}_labels", path), dtype=np.int64)
        if lab.shape != (n,):
            raise ValueError(
                f"{path}: {kind}_labels has shape {lab.shape}, expected ({n},)."
            )
        if n and (lab.min() < 0 or lab.max() >= num):
            raise ValueError(
                f"{path}: {kind}_labels outside [0, {num}): "
                f"min={lab.min()}, max={lab.max()}"
            )
        labels[kind] = lab.astype(np.int32)
    # Rows are channel-major: 1024 R, 1024 G, 1024 B, each 32 rows of 32.
    images = np.ascontiguousarray(
        data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    )
    return images, labels


def _parse_meta(raw, path):
    d = _unpickle(raw, path)
    names = {}
    for kind in ("fine", "coarse"):
        names[kind] = tuple(
            n.decode("utf-8") if isinstance(n, bytes) else str(n)
            for n in _get(d, f"{kind}_label_names", path)
        )
    return names


def _readonly(a):
    a.setflags(write=False)
    return a


def _make(split_parsed, names, source, split):
    images, labels = split_parsed
    for kind, num in (("fine", 100), ("coarse", 20)):
        if len(names[kind]) != num:
            raise ValueError(
                f"{source}: meta lists {len(names[kind])} {kind} label names, "
                f"expected {num}."
            )
    return LabeledImages(
        images=_readonly(images),
        labels={k: _readonly(v) for k, v in labels.items()},
        class_names=dict(names),
        source=f"{source} [{split}]",
    )


# Parsed splits, keyed by file identity; a handful at most (train = 150 MB).
_CACHE = collections.OrderedDict()
_CACHE_SIZE = 4
_CACHE_LOCK = threading.Lock()


def _cache_get(key):
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    return None


def _cache_put(key, value):
    with _CACHE_LOCK:
        _CACHE[key] = value
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def clear_cache():
    """Drops parsed splits and cached MD5 verifications."""
    with _CACHE_LOCK:
        _CACHE.clear()
    checksums.clear_cache()


def _stat_key(path):
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def _load_from_folder(folder, split, md5s):
    def read(name):
        p = folder / name
        raw = p.read_bytes()
        checksums.verify_md5(p, md5s.get(name), data=raw, hint=_MD5_HINT)
        return raw, p

    raw, p = read("meta")
    names = _parse_meta(raw, p)
    raw, p = read(split)
    return _make(_parse_batch(raw, p), names, str(folder), split)


def _load_from_archive(archive, md5s):
    """Reads meta, train and test in one pass over the archive."""
    checksums.verify_md5(archive, md5s.get("archive"), hint=_MD5_HINT)
    wanted = {"meta", "train", "test"}
    raws = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in raws:
                    raws[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(
            f"Could not read {archive} as a gzip tar archive: {e}"
        ) from e
    missing = wanted - set(raws)
    if missing:
        raise ValueError(
            f"{archive} lacks {sorted(missing)}: not a CIFAR-100 python "
            "archive (expected cifar-100-python/{train,test,meta})."
        )
    names = _parse_meta(raws["meta"], f"{archive}:meta")
    return {
        split: _make(
            _parse_batch(raws[split], f"{archive}:{split}"),
            names,
            str(archive),
            split,
        )
        for split in SPLITS
    }


def load_cifar100(data_dir=None, split="train", *, verify=True,
                  md5_table=None):
    """Loads one split of a local official CIFAR-100 python copy.

    Args:
        data_dir: the `cifar-100-python/` folder, the
            `cifar-100-python.tar.gz` archive, a folder holding either, or
            `None` for `default_cifar100_dir()`.
        split: `"train"` (50,000 images) or `"test"` (10,000).
        verify: check MD5 sums before unpickling (default).  Successful
            checks are cached per (path, size, mtime) in this process.
        md5_table: dict with keys among `"train"`, `"test"`, `"meta"`,
            `"archive"` replacing the official `CIFAR100_MD5` (a missing key
            is not checked); for test fakes and re-packed copies.

    Returns:
        A `LabeledImages` with uint8 (N, 32, 32, 3) images, `"fine"` (0..99)
        and `"coarse"` (0..19) labels and the class names from `meta`.  The
        arrays are cached and read-only.

    Raises:
        FileNotFoundError: the copy is missing (message says how to provide
            it).
        ChecksumError: a file has the wrong MD5 (message names the file,
            the expected and the actual sum).
        ValueError: a file cannot be parsed.
    """
    if split not in SPLITS:
        raise ValueError(
            f"CIFAR-100 has splits {SPLITS}. Received: split={split!r}"
        )
    location = resolve_cifar100(data_dir)
    md5s = {}
    if verify:
        md5s = dict(CIFAR100_MD5 if md5_table is None else md5_table)
    md5_key = tuple(sorted(md5s.items()))
    if location.kind == "archive":
        key = ("archive", _stat_key(location.path), md5_key)
        loaded = _cache_get(key)
        if loaded is None:
            loaded = _load_from_archive(location.path, md5s)
            _cache_put(key, loaded)
        return loaded[split]
    folder = location.path
    key = ("folder", _stat_key(folder / split), _stat_key(folder / "meta"),
           split, md5_key)
    loaded = _cache_get(key)
    if loaded is None:
        loaded = _load_from_folder(folder, split, md5s)
        _cache_put(key, loaded)
    return loaded


# ---------------------------------------------------------------------------
# keras.datasets (online machines)
# ---------------------------------------------------------------------------


def load_cifar100_keras(split="train"):
    """Loads CIFAR-100 through `keras.datasets.cifar100.load_data`.

    Keras downloads (and caches under `~/.keras/datasets`) the official
    archive, so this needs a machine that is online or a warm Keras cache.
    Both label kinds are read (two `load_data` calls on the cached copy).
    """
    if split not in SPLITS:
        raise ValueError(
            f"CIFAR-100 has splits {SPLITS}. Received: split={split!r}"
        )
    import keras

    index = SPLITS.index(split)
    labels = {}
    images = None
    for kind in ("fine", "coarse"):
        x, y = keras.datasets.cifar100.load_data(label_mode=kind)[index]
        if images is None:
            images = np.asarray(x, dtype=np.uint8)
            if images.shape[1] == 3 and images.shape[-1] != 3:
                images = images.transpose(0, 2, 3, 1)  # channels_first
            images = np.ascontiguousarray(images)
        labels[kind] = np.asarray(y, dtype=np.int32).reshape(-1)
    return LabeledImages(
        images=images,
        labels=labels,
        class_names={"fine": FINE_LABEL_NAMES, "coarse": COARSE_LABEL_NAMES},
        source=f"keras.datasets.cifar100 [{split}]",
    )


# ---------------------------------------------------------------------------
# tensorflow-datasets (prepared offline)
# ---------------------------------------------------------------------------

TFDS_NAME = "cifar100"
_BINARY_ARCHIVE = "cifar-100-binary.tar.gz"


def _require_prepared(builder, data_dir):
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"No prepared tfds '{TFDS_NAME}' dataset in {data_dir} "
            f"(looked for {builder.data_path}). Prepare it offline with "
            "keras_semkd.data.prepare_tfds_cifar100(data_dir, source=...) "
            "from the local cifar-100-python copy; this loader never "
            "downloads."
        )


def load_cifar100_tfds(data_dir, split="train"):
    """Loads a prepared tfds `cifar100` with `download=False`.

    Args:
        data_dir: the tfds data dir (holding `cifar100/3.0.2/`).
        split: `"train"` or `"test"` (any tfds split string works).

    Raises:
        FileNotFoundError: no prepared dataset there (nothing is downloaded).
    """
    if data_dir is None:
        raise FileNotFoundError(
            "source='tfds' needs data_dir= pointing at a tensorflow-datasets "
            "folder holding a prepared cifar100."
        )
    import tensorflow_datasets as tfds

    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"tfds data directory {data_dir} does not exist. Prepare it "
            "offline with keras_semkd.data.prepare_tfds_cifar100."
        )
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    _require_prepared(builder, data_dir)
    arrays = tfds.as_numpy(
        tfds.load(TFDS_NAME, split=split, data_dir=data_dir, download=False,
                  try_gcs=False, batch_size=-1)
    )
    features = builder.info.features
    # tfds stores examples in hashed-key order; restore the official order
    # (ids are "<split>_<index:05d>") so every source agrees example-wise.
    order = np.argsort(arrays["id"], kind="stable")
    return LabeledImages(
        images=np.ascontiguousarray(arrays["image"][order], dtype=np.uint8),
        labels={
            "fine": arrays["label"][order].astype(np.int32),
            "coarse": arrays["coarse_label"][order].astype(np.int32),
        },
        class_names={
            "fine": tuple(features["label"].names),
            "coarse": tuple(features["coarse_label"].names),
        },
        source=f"tfds:{builder.data_path} [{split}]",
    )


@functools.lru_cache(maxsize=None)
def _local_builder_class():
    """The official tfds builder, fed from the python pickles.

    Same name, version, features, keys and ids as the official
    `cifar100`; only `_split_generators` differs: it reads the examples
    from `load_cifar100` instead of downloading the binary archive.  Not
    registered, so the official builder still owns the name for loading.
    """
    from tensorflow_datasets.image_classification import cifar as tfds_cifar

    class LocalCifar100(tfds_cifar.Cifar100, skip_registration=True):
        name = TFDS_NAME

        def __init__(self, *, splits, **kwargs):
            self._local_splits = splits
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            names = self._local_splits["train"].class_names
            self.info.features["label"].names = list(names["fine"])
            self.info.features["coarse_label"].names = list(names["coarse"])
            return {
                split: self._generate_examples(f"{split}_", data)
                for split, data in self._local_splits.items()
            }

        def _generate_examples(self, split_prefix, data):
            fine, coarse = data.labels["fine"], data.labels["coarse"]
            for index in range(len(data)):
                yield index, {
                    "id": f"{split_prefix}{index:05d}",
                    "image": data.images[index],
                    "label": int(fine[index]),
                    "coarse_label": int(coarse[index]),
                }

    return LocalCifar100


def prepare_tfds_cifar100(data_dir, source=None, *, verify=True,
                          md5_table=None):
    """Prepares tfds `cifar100` in `data_dir` with no network access.

    * If `source` is a folder holding the official `cifar-100-binary.tar.gz`
      (the archive tfds itself would download), tfds builds from it through
      `DownloadConfig(manual_dir=source)`; tfds checks its SHA-256.
    * Otherwise `source` is the python copy accepted by `load_cifar100`
      (folder, archive or parent; `None` = `default_cifar100_dir()`): the
      MD5-verified pickles are written with the official builder's features,
      keys and ids, so `tfds.load("cifar100", data_dir=data_dir,
      download=False)` reads the result like an official build.

    An already prepared dataset is left as it is.

    Returns:
        The prepared version folder (`<data_dir>/cifar100/3.0.2`).
    """
    import tensorflow_datasets as tfds

    data_dir = os.fspath(data_dir)
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    if builder.is_prepared():
        return builder.data_path
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    binary = None
    if source is not None:
        src = pathlib.Path(os.fspath(source))
        if src.is_dir() and (src / _BINARY_ARCHIVE).is_file():
            binary = src
    if binary is not None:
        config = tfds.download.DownloadConfig(
            manual_dir=os.fspath(binary), try_download_gcs=False
        )
        builder.download_and_prepare(download_config=config)
        return builder.data_path
    splits = {
        split: load_cifar100(source, split, verify=verify,
                             md5_table=md5_table)
        for split in SPLITS
    }
    local = _local_builder_class()(splits=splits, data_dir=data_dir)
    local.download_and_prepare(download_config=config)
    return local.data_path
