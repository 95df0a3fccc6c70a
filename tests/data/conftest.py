"""Fixtures for the data tests: fake CIFAR-100 copies, PNG folders and a
network guard.

No test here may reach the network: a `tfds.load` that tries to download
hangs for minutes on machines without internet.  `no_network` (autouse)
makes every socket connection and every tfds download fail at once.
"""

import hashlib
import io
import pickle
import socket
import tarfile

import numpy as np
import pytest

from keras_semkd.data import checksums
from keras_semkd.data import cifar100 as cifar100_lib

FAKE_TRAIN = 200  # 2 per fine class
FAKE_TEST = 50


class NetworkAccessError(RuntimeError):
    """Raised by the guard instead of touching the network."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fails fast on any socket connection or tfds download attempt."""

    def refuse(*args, **kwargs):
        raise NetworkAccessError(f"network access attempted: {args[:2]}")

    def guarded(original):
        def connect(self, *args, **kwargs):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                refuse(*args)
            return original(self, *args, **kwargs)

        return connect

    monkeypatch.setattr(socket.socket, "connect",
                        guarded(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex",
                        guarded(socket.socket.connect_ex))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    try:
        from tensorflow_datasets.core.download import download_manager
        from tensorflow_datasets.core.download import downloader
    except ImportError:  # pragma: no cover
        return
    monkeypatch.setattr(download_manager.DownloadManager, "_download", refuse)
    monkeypatch.setattr(downloader, "_open_url", refuse)


@pytest.fixture(autouse=True)
def fresh_caches():
    """Every test starts without cached parses or MD5 verifications."""
    cifar100_lib.clear_cache()
    yield
    cifar100_lib.clear_cache()


def fake_cifar_arrays(n, seed):
    """Channel-major rows, fine labels cycling 0..99, coarse = fine // 5."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    fine = [int(i % 100) for i in range(n)]
    coarse = [f // 5 for f in fine]
    return data, fine, coarse


def _dump(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_fake_cifar100(folder, n_train=FAKE_TRAIN, n_test=FAKE_TEST):
    """Writes an official-format CIFAR-100 python copy into `folder`.

    Returns:
        The md5 table of the written files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        data, fine, coarse = fake_cifar_arrays(n, seed)
        _dump({
            b"batch_label": f"{split} batch".encode(),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"fine_labels": fine,
            b"coarse_labels": coarse,
            b"data": data,
        }, folder / split)
    _dump({
        b"fine_label_names": [
            n.encode() for n in cifar100_lib.FINE_LABEL_NAMES],
        b"coarse_label_names": [
            n.encode() for n in cifar100_lib.COARSE_LABEL_NAMES],
    }, folder / "meta")
    return {
        name: hashlib.md5((folder / name).read_bytes()).hexdigest()
        for name in ("train", "test", "meta")
    }


@pytest.fixture
def fake_cifar(tmp_path):
    """`(folder, md5_table)` of a fake `cifar-100-python/` copy."""
    folder = tmp_path / "shared" / "cifar-100-python"
    md5s = write_fake_cifar100(folder)
    return folder, md5s


@pytest.fixture
def fake_cifar_archive(tmp_path, fake_cifar):
    """`(archive, md5_table)` of a fake `cifar-100-python.tar.gz`."""
    folder, md5s = fake_cifar
    archive = tmp_path / "archive" / "cifar-100-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("meta", "test", "train"):
            tar.add(folder / name, arcname=f"cifar-100-python/{name}")
    md5s = dict(md5s, archive=checksums.md5_of_file(archive))
    return archive, md5s


def write_png_folder(root, class_names, per_class, seed=0, size=32,
                     splits=("train", "valid", "test")):
    """Writes `root/<split>/<class>/<i>.png` with class-coloured images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        for c, name in enumerate(class_names):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                img[0, 0] = (c, i, 7)  # recognisable pixel
                mode_img = Image.fromarray(img)
                if c == 1 and i == 0:
                    mode_img = mode_img.convert("L")  # CINIC has grayscale
                mode_img.save(folder / f"{split or 'x'}_{name}_{i}.png")
    return root


def png_bytes(img):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()
