"""CIFAR-100 from local official copies (fake and real), tfds and keras."""

import os
import pickle
import shutil
import time

import numpy as np
import pytest

from keras_semkd import data as kd_data
from keras_semkd.data import checksums
from keras_semkd.data import cifar100 as cifar100_lib
from keras_semkd.data import paths
from tests.data.conftest import FAKE_TEST
from tests.data.conftest import FAKE_TRAIN
from tests.data.conftest import NetworkAccessError
from tests.data.conftest import fake_cifar_arrays

REAL_DIR = paths.default_cifar100_dir()
needs_real = pytest.mark.skipif(
    REAL_DIR is None, reason="no local CIFAR-100 copy (../shared/data)"
)


def _expected_images(n, seed):
    data, fine, coarse = fake_cifar_arrays(n, seed)
    return data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1), fine, coarse


# ---------------------------------------------------------------------------
# Fake copies: folder, parent folder, archive
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["folder", "parent"])
def test_fake_folder_loads(fake_cifar, where):
    folder, md5s = fake_cifar
    data_dir = folder if where == "folder" else folder.parent
    train = kd_data.load_cifar100(data_dir, "train", md5_table=md5s)
    test = kd_data.load_cifar100(data_dir, "test", md5_table=md5s)
    images, fine, coarse = _expected_images(FAKE_TRAIN, 1)
    assert train.images.shape == (FAKE_TRAIN, 32, 32, 3)
    assert train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.labels["fine"], fine)
    np.testing.assert_array_equal(train.labels["coarse"], coarse)
    assert train.labels["fine"].dtype == np.int32
    assert len(test) == FAKE_TEST
    assert train.class_names["fine"] == cifar100_lib.FINE_LABEL_NAMES
    assert train.class_names["coarse"] == cifar100_lib.COARSE_LABEL_NAMES
    assert not train.images.flags.writeable  # cached arrays are read-only


def test_fake_archive_loads_like_folder(fake_cifar, fake_cifar_archive):
    folder, md5s = fake_cifar
    archive, archive_md5s = fake_cifar_archive
    for data_dir in (archive, archive.parent):
        for split in ("train", "test"):
            a = kd_data.load_cifar100(data_dir, split, md5_table=archive_md5s)
            b = kd_data.load_cifar100(folder, split, md5_table=md5s)
            np.testing.assert_array_equal(a.images, b.images)
            np.testing.assert_array_equal(a.labels["fine"], b.labels["fine"])
            np.testing.assert_array_equal(a.labels["coarse"],
                                          b.labels["coarse"])


def test_official_md5_table_rejects_fake(fake_cifar):
    folder, _ = fake_cifar
    with pytest.raises(checksums.ChecksumError) as err:
        kd_data.load_cifar100(folder, "train")
    message = str(err.value)
    # meta is checked first; the message names file, expected and actual.
    assert str(folder / "meta") in message
    assert cifar100_lib.CIFAR100_MD5["meta"] in message
    assert checksums.md5_of_file(folder / "meta") in message


def test_verify_false_skips_md5(fake_cifar):
    folder, _ = fake_cifar
    assert len(kd_data.load_cifar100(folder, "test", verify=False)) == FAKE_TEST


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_damaged_file_raises_named_md5_error(fake_cifar, damage):
    folder, md5s = fake_cifar
    path = folder / "train"
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        path.write_bytes(raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:])
    with pytest.raises(checksums.ChecksumError) as err:
        kd_data.load_cifar100(folder, "train", md5_table=md5s)
    assert err.value.path == str(path)
    assert err.value.expected == md5s["train"]
    assert err.value.actual == checksums.md5_of_file(path)
    assert md5s["train"] in str(err.value) and str(path) in str(err.value)
    # The test split is intact and still loads.
    assert len(kd_data.load_cifar100(folder, "test", md5_table=md5s)) == 50


def test_truncated_archive_raises_named_md5_error(fake_cifar_archive):
    archive, md5s = fake_cifar_archive
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(checksums.ChecksumError, match="cifar-100-python.tar.gz"):
        kd_data.load_cifar100(archive, "train", md5_table=md5s)
    # Without verification the broken archive is still refused, loudly.
    with pytest.raises(ValueError, match="cifar-100-python.tar.gz"):
        kd_data.load_cifar100(archive, "train", verify=False)


def test_unpickling_refuses_code(fake_cifar):
    folder, _ = fake_cifar

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(folder / "test", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="Refusing to unpickle"):
        kd_data.load_cifar100(folder, "test", verify=False)


def test_md5_verification_is_cached_per_file_version(fake_cifar, monkeypatch):
    folder, md5s = fake_cifar
    calls = []
    original = checksums.md5_of_bytes
    monkeypatch.setattr(checksums, "md5_of_bytes",
                        lambda b: calls.append(1) or original(b))
    kd_data.load_cifar100(folder, "test", md5_table=md5s)
    assert len(calls) == 2  # meta + test
    cifar100_lib._CACHE.clear()  # force a re-read, keep verifications
    kd_data.load_cifar100(folder, "test", md5_table=md5s)
    assert len(calls) == 2
    # Touching the file (new mtime) invalidates the cached verification.
    st = os.stat(folder / "test")
    os.utime(folder / "test", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    kd_data.load_cifar100(folder, "test", md5_table=md5s)
    assert len(calls) == 3


def test_missing_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        kd_data.load_cifar100(tmp_path / "nope", "train")
    assert str(tmp_path / "nope") in str(err.value)
    assert paths.DATA_ENV_VAR in str(err.value)
    with pytest.raises(FileNotFoundError, match="holds no CIFAR-100"):
        kd_data.load_cifar100(tmp_path, "train")


def test_incomplete_copy_names_missing_file(fake_cifar):
    folder, md5s = fake_cifar
    (folder / "test").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['test'\]"):
        kd_data.load_cifar100(folder, "train", md5_table=md5s)


def test_default_dir_from_env(fake_cifar, monkeypatch, tmp_path):
    folder, md5s = fake_cifar
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(folder.parent))
    assert kd_data.default_cifar100_dir() == folder
    assert len(kd_data.load_cifar100(None, "test", md5_table=md5s)) == 50
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(tmp_path / "empty"))
    assert kd_data.default_cifar100_dir() is None
    with pytest.raises(FileNotFoundError, match="No local CIFAR-100 copy"):
        kd_data.load_cifar100(None, "test")


def test_bad_split():
    with pytest.raises(ValueError, match="split='valid'"):
        kd_data.load_cifar100(None, "valid")


# ---------------------------------------------------------------------------
# The real copy in ../shared/data (skipped when absent)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_train():
    return kd_data.load_cifar100(REAL_DIR, "train")


@needs_real
def test_real_copy_loads_verified(real_train):
    train = real_train
    test = kd_data.load_cifar100(REAL_DIR, "test")
    for name in ("test", "meta"):
        assert checksums.is_verified(REAL_DIR / name,
                                     cifar100_lib.CIFAR100_MD5[name])
    assert train.images.shape == (50000, 32, 32, 3)
    assert test.images.shape == (10000, 32, 32, 3)
    for split, per_class in ((train, 500), (test, 100)):
        fine, coarse = split.labels["fine"], split.labels["coarse"]
        assert fine.min() == 0 and fine.max() == 99
        assert coarse.min() == 0 and coarse.max() == 19
        np.testing.assert_array_equal(np.bincount(fine, minlength=100),
                                      np.full(100, per_class))
    assert train.class_names["fine"] == cifar100_lib.FINE_LABEL_NAMES
    assert train.class_names["coarse"] == cifar100_lib.COARSE_LABEL_NAMES
    # Every fine class belongs to exactly one coarse class (5 per coarse).
    pairs = set(zip(train.labels["fine"].tolist(),
                    train.labels["coarse"].tolist()))
    assert len(pairs) == 100
    # First train image: 'bos_taurus_s_000507.png', cattle / large omnivores.
    assert train.class_names["fine"][train.labels["fine"][0]] == "cattle"
    assert (train.class_names["coarse"][train.labels["coarse"][0]]
            == "large_omnivores_and_herbivores")


@needs_real
def test_real_first_image_pixel_layout(real_train):
    with open(REAL_DIR / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    row = raw[b"data"][0]
    by_hand = np.zeros((32, 32, 3), np.uint8)
    for r in range(32):
        for c in range(32):
            for ch in range(3):
                by_hand[r, c, ch] = row[ch * 1024 + r * 32 + c]
    image = real_train.images[0]
    np.testing.assert_array_equal(image, by_hand)
    assert raw[b"filenames"][0] == b"bos_taurus_s_000507.png"


# ---------------------------------------------------------------------------
# tensorflow-datasets, keras.datasets, and no network
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["folder", "archive"])
def test_prepare_and_load_tfds_offline(tmp_path, fake_cifar,
                                       fake_cifar_archive, source):
    import tensorflow_datasets as tfds

    folder, md5s = fake_cifar
    archive, archive_md5s = fake_cifar_archive
    src, table = (folder, md5s) if source == "folder" else (archive,
                                                             archive_md5s)
    tfds_dir = tmp_path / "tfds"
    path = kd_data.prepare_tfds_cifar100(tfds_dir, src, md5_table=table)
    assert (path / "dataset_info.json").is_file()
    ds = tfds.load("cifar100", split="test", data_dir=str(tfds_dir),
                   download=False)
    example = next(iter(ds))
    assert example["image"].shape == (32, 32, 3)
    assert set(example) == {"id", "image", "label", "coarse_label"}
    for split in ("train", "test"):
        a = kd_data.load_cifar100_tfds(tfds_dir, split)
        b = kd_data.load_cifar100(folder, split, md5_table=md5s)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels["fine"], b.labels["fine"])
        np.testing.assert_array_equal(a.labels["coarse"], b.labels["coarse"])
        assert a.class_names == b.class_names
    # Preparing again reuses the prepared folder.
    assert kd_data.prepare_tfds_cifar100(tfds_dir, src, md5_table=table) == path


def test_tfds_source_never_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_tfds_cifar100"):
        kd_data.load_cifar100_tfds(tmp_path, "train")
    with pytest.raises(FileNotFoundError):
        kd_data.load_cifar100_tfds(tmp_path / "missing", "train")


def test_network_guard_makes_tfds_download_fail_fast(tmp_path):
    """Proves the autouse guard works: a real download attempt is refused."""
    import tensorflow_datasets as tfds

    start = time.monotonic()
    with pytest.raises(NetworkAccessError):
        tfds.load("cifar100", split="test", data_dir=str(tmp_path),
                  download=True, try_gcs=False)
    assert time.monotonic() - start < 60  # a guard, not a benchmark


def test_binary_archive_goes_through_tfds_manual_dir(tmp_path):
    """A fake `cifar-100-binary.tar.gz` reaches tfds' own checksum check
    through `manual_dir` (proving that route downloads nothing)."""
    from tensorflow_datasets.core.download import download_manager

    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "cifar-100-binary.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(download_manager.NonMatchingChecksumError):
        kd_data.prepare_tfds_cifar100(tmp_path / "tfds", manual)


def test_keras_source_mocked(monkeypatch):
    import keras

    calls = []

    def fake_load_data(label_mode="fine"):
        calls.append(label_mode)
        rng = np.random.default_rng(0)
        x_tr = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
        x_te = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        mod = 100 if label_mode == "fine" else 20
        return ((x_tr, (np.arange(6) % mod).reshape(-1, 1)),
                (x_te, (np.arange(4) % mod).reshape(-1, 1)))

    monkeypatch.setattr(keras.datasets.cifar100, "load_data", fake_load_data)
    loaded = kd_data.load_cifar100_keras("test")
    assert calls == ["fine", "coarse"]
    assert loaded.images.shape == (4, 32, 32, 3)
    assert loaded.labels["fine"].shape == (4,)
    assert loaded.class_names["fine"][19] == "cattle"


def test_shared_copy_is_never_written(fake_cifar, tmp_path):
    """Loading works from a read-only copy (../shared/data is read-only)."""
    folder, md5s = fake_cifar
    ro = tmp_path / "ro" / "cifar-100-python"
    shutil.copytree(folder, ro)
    for p in ro.iterdir():
        p.chmod(0o444)
    ro.chmod(0o555)
    try:
        assert len(kd_data.load_cifar100(ro, "test", md5_table=md5s)) == 50
    finally:
        ro.chmod(0o755)
