"""The TF-free NumPy / PyDataset input path (also under KERAS_BACKEND=jax)."""

import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_semkd import data as kd_data
from tests.data.conftest import FAKE_TEST
from tests.data.conftest import FAKE_TRAIN

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_shapes_dtypes_and_info(fake_cifar):
    folder, md5s = fake_cifar
    batches, info = kd_data.get_numpy_dataset(
        "cifar100", "train", 32, data_dir=folder, md5_table=md5s)
    assert isinstance(batches, keras.utils.PyDataset)
    assert len(batches) == FAKE_TRAIN // 32 == info.num_batches
    x, y = batches[0]
    assert x.shape == (32, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (32,) and y.dtype == np.int32
    assert info.augment and info.shuffle and info.num_classes == 100
    with pytest.raises(IndexError):
        batches[len(batches)]
    assert sum(1 for _ in batches) == len(batches)  # plain iteration


def test_deterministic_by_seed_epoch_and_index(fake_cifar):
    folder, md5s = fake_cifar

    def make(seed):
        return kd_data.get_numpy_dataset("cifar100", "train", 32,
                                         data_dir=folder, md5_table=md5s,
                                         seed=seed)[0]

    a, b, c = make(0), make(0), make(1)
    # Order of requests does not matter (workers may interleave).
    xa = [a[i][0] for i in range(len(a))]
    xb = [b[i][0] for i in reversed(range(len(b)))][::-1]
    for u, v in zip(xa, xb):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(xa[0], c[0][0])
    a.on_epoch_end()
    assert a.epoch == 1
    assert not np.array_equal(xa[0], a[0][0])
    np.testing.assert_array_equal(a.get_batch(0, epoch=0)[0], xa[0])


def test_epoch_covers_split_once(fake_cifar):
    folder, md5s = fake_cifar
    batches, _ = kd_data.get_numpy_dataset(
        "cifar100", "train", 32, data_dir=folder, md5_table=md5s,
        drop_remainder=False)
    seen = np.concatenate([batches.batch_indices(i)
                           for i in range(len(batches))])
    assert sorted(seen.tolist()) == list(range(FAKE_TRAIN))


def test_eval_path_matches_tf_pipeline(fake_cifar):
    folder, md5s = fake_cifar
    batches, info = kd_data.get_numpy_dataset(
        "cifar100", "test", 16, data_dir=folder, md5_table=md5s,
        label_mode="both")
    x = np.concatenate([batches[i][0] for i in range(len(batches))])
    y = batches[0][1]
    assert x.shape == (FAKE_TEST, 32, 32, 3) and set(y) == {"fine", "coarse"}
    ds, _ = kd_data.get_dataset("cifar100", "test", 16, data_dir=folder,
                                md5_table=md5s)
    x_tf = np.concatenate([xb.numpy() for xb, _ in ds])
    np.testing.assert_allclose(x, x_tf, atol=1e-5)
    arrays, labels, _ = kd_data.get_numpy_arrays(
        "cifar100", "test", data_dir=folder, md5_table=md5s)
    np.testing.assert_allclose(arrays, x, atol=1e-6)


def test_augmented_pixels_are_crops(fake_cifar):
    folder, md5s = fake_cifar
    batches, info = kd_data.get_numpy_dataset(
        "cifar100", "train", 8, data_dir=folder, md5_table=md5s,
        shuffle=False)
    x, _ = batches[0]
    raw = kd_data.load_cifar100(folder, "train", md5_table=md5s).images[:8]
    norm = info.normalization
    pix = np.rint((x * np.array(norm.std) + np.array(norm.mean)) * 255)
    padded = np.pad(raw, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(8):
        assert any(
            np.array_equal(pix[i], c[:, ::-1] if f else c)
            for oy in range(9) for ox in range(9) for f in (False, True)
            for c in [padded[i, oy:oy + 32, ox:ox + 32]]
        )


def test_synthetic_numpy():
    batches, info = kd_data.get_numpy_dataset("synthetic", "test", 64,
                                              num_classes=4, image_size=8)
    x, y = batches[0]
    assert x.shape == (64, 8, 8, 3) and info.is_generated
    assert not info.augment and y.max() < 4


def test_jax_backend_without_tensorflow(tmp_path, fake_cifar):
    """Under KERAS_BACKEND=jax the NumPy path never imports TensorFlow and
    feeds `model.fit`."""
    folder, md5s = fake_cifar
    script = textwrap.dedent(f"""
        import sys
        import keras
        assert keras.backend.backend() == "jax"
        from keras_semkd import data as kd_data
        batches, info = kd_data.get_numpy_dataset(
            "cifar100", "train", 50, data_dir={str(folder)!r},
            md5_table={md5s!r}, seed=0)
        x, y = batches[0]
        assert x.shape == (50, 32, 32, 3) and x.dtype == "float32"
        model = keras.Sequential([
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(4, 3, strides=4),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(info.num_classes),
        ])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        model.fit(batches, epochs=2, verbose=0)
        # Keras may call on_epoch_end once more (after its build peek).
        assert batches.epoch >= 2, batches.epoch
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        assert "keras_semkd.models" not in sys.modules
        print("OK")
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", script], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")
