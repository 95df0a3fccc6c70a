"""Input pipelines: CIFAR-100, CINIC-10, image folders, generated data.

`get_dataset(name, split, batch_size, ...)` returns a tf.data pipeline and
a `DatasetInfo`; `get_numpy_dataset` is its TF-free twin (a
`keras.utils.PyDataset`) for the JAX backend.  The TensorFlow-based names
(`get_dataset`, the tfds helpers, the in-graph augmentation) are imported
lazily, so `import keras_semkd.data` and the NumPy path never import
TensorFlow.  This package never imports `keras_semkd.models`.
"""

import importlib

from keras_semkd.data.arrays import LabeledImages
from keras_semkd.data.arrays import carve_validation
from keras_semkd.data.checksums import ChecksumError
from keras_semkd.data.cifar100 import CIFAR100_MD5
from keras_semkd.data.cifar100 import COARSE_LABEL_NAMES
from keras_semkd.data.cifar100 import FINE_LABEL_NAMES
from keras_semkd.data.cifar100 import load_cifar100
from keras_semkd.data.cifar100 import load_cifar100_keras
from keras_semkd.data.cifar100 import load_cifar100_tfds
from keras_semkd.data.cifar100 import prepare_tfds_cifar100
from keras_semkd.data.cifar100 import resolve_cifar100
from keras_semkd.data.cinic10 import CINIC10_CLASSES
from keras_semkd.data.cinic10 import load_cinic10
from keras_semkd.data.cinic10 import prepare_tfds_cinic10
from keras_semkd.data.image_folder import load_image_folder
from keras_semkd.data.image_folder import load_image_folder_split
from keras_semkd.data.normalization import NORMALIZATIONS
from keras_semkd.data.normalization import Normalization
from keras_semkd.data.normalization import get_normalization
from keras_semkd.data.paths import DATA_ENV_VAR
from keras_semkd.data.paths import default_cifar100_dir
from keras_semkd.data.paths import default_cinic10_dir
from keras_semkd.data.paths import default_data_dir
from keras_semkd.data.sources import DATASETS
from keras_semkd.data.sources import DatasetInfo
from keras_semkd.data.sources import DatasetSpec
from keras_semkd.data.sources import load_split
from keras_semkd.data.synthetic import load_synthetic

# Imported on first use (they import TensorFlow / Keras).
_LAZY = {
    "get_dataset": "keras_semkd.data.pipeline",
    "AugmentedBatches": "keras_semkd.data.numpy_pipeline",
    "get_numpy_dataset": "keras_semkd.data.numpy_pipeline",
    "get_numpy_arrays": "keras_semkd.data.numpy_pipeline",
    "Cinic10": "keras_semkd.data.cinic10_builder",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(
            f"module 'keras_semkd.data' has no attribute {name!r}"
        )
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
