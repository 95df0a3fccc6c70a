"""Named datasets, split selection and `DatasetInfo` (NumPy only).

Both input paths -- `get_dataset` (tf.data) and `get_numpy_dataset`
(TF-free, for the JAX backend) -- start from `load_split`, which returns the
decoded uint8 images and int32 labels of one split plus a `DatasetInfo`.

Registered datasets (`DATASETS.names()`): `cifar100`, `cinic10`,
`image_folder`, `synthetic`.  Register another with

```python
DATASETS.register("my_data", DatasetSpec(load=my_loader, splits=("train",
    "test"), label_kinds=("fine",), normalization="cifar100"))
```

where `my_loader(split, data_dir, **kwargs)` returns a `LabeledImages`.
"""

import dataclasses
import os
import pathlib
from typing import Callable, Optional

from keras_semkd.data import cifar100
from keras_semkd.data import cinic10
from keras_semkd.data import image_folder
from keras_semkd.data import synthetic
from keras_semkd.data.arrays import carve_validation
from keras_semkd.data.arrays import stratified_subset
from keras_semkd.data.normalization import Normalization
from keras_semkd.data.normalization import get_normalization
from keras_semkd.data.normalization import normalization_from_images
from keras_semkd.registry import Registry

SPLITS = ("train", "validation", "test")
LABEL_MODES = ("fine", "coarse", "both")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to load a named dataset.

    Attributes:
        load: `load(split, data_dir, **kwargs) -> LabeledImages` for each of
            `splits`.
        splits: the splits the source itself provides.
        label_kinds: label kinds the source provides (`"fine"` always).
        normalization: name in `NORMALIZATIONS`, or `None` to compute the
            statistics from the train split.
        needs_data_dir: whether the source reads local files.
    """

    load: Callable
    splits: tuple = ("train", "test")
    label_kinds: tuple = ("fine",)
    normalization: Optional[str] = None
    needs_data_dir: bool = True


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a pipeline delivers.

    Attributes:
        name: registered dataset name.
        split: `"train"`, `"validation"` or `"test"`.
        num_examples: examples in this split (after any carve-out).
        num_classes: classes of the delivered label (`fine` for
            `label_mode="both"`).
        class_names: names of those classes.
        input_shape: `(height, width, channels)` of one image.
        label_mode: `"fine"`, `"coarse"` or `"both"` (labels are then a dict
            `{"fine": ..., "coarse": ...}`).
        is_generated: `True` when the images are generated (synthetic), not
            a real dataset.
        source: where the data came from (path, tfds dir, keras, generator).
        normalization: the `Normalization` applied in the pipeline.
        coarse_class_names: CIFAR-100 super-class names, when available.
        validation_split: fraction of train carved out as validation.
        carved: `True` when this split was carved out of the dataset's
            train split (`"validation"`: the held-out part; `"train"`: the
            rest); `False` for a split the dataset provides itself.
        split_seed: the seed of the carve-out (`None` when not carved).
        split_num_examples: examples in the whole split before an
            evaluation subset (`max_examples`); equals `num_examples`
            when the whole split is delivered.
        subset_seed: seed of the stratified subset (`None`: whole split).
        normalization_source: where `normalization` comes from (the
            dataset's registered constants, the training images, or given).
        batch_size: batch size of the pipeline (`None` for raw arrays).
        num_batches: batches per epoch (`None` for raw arrays).
        augment: whether the pipeline augments.
        shuffle: whether the pipeline shuffles.
        seed: the pipeline seed.
    """

    name: str
    split: str
    num_examples: int
    num_classes: int
    class_names: tuple = dataclasses.field(repr=False)
    input_shape: tuple = ()
    label_mode: str = "fine"
    is_generated: bool = False
    source: str = ""
    normalization: Optional[Normalization] = None
    coarse_class_names: Optional[tuple] = dataclasses.field(
        default=None, repr=False)
    validation_split: float = 0.0
    batch_size: Optional[int] = None
    num_batches: Optional[int] = None
    augment: bool = False
    shuffle: bool = False
    seed: int = 0
    carved: bool = False
    split_seed: Optional[int] = None
    split_num_examples: Optional[int] = None
    subset_seed: Optional[int] = None
    normalization_source: str = ""

    @property
    def is_real(self):
        """`True` for real (not generated) data."""
        return not self.is_generated

    @property
    def is_subset(self):
        """`True` when only a stratified subset of the split is delivered."""
        return self.subset_seed is not None

    def describe_split(self):
        """A one-line account of which images these are, for reports:
        the split, whether it was carved out of train, and whether it is a
        subset (e.g. `"validation carved from train (10% validation,
        stratified, split_seed=0; held out from training); stratified
        subset of 500 of 5000 images (seed 0)"`)."""
        text = self.split
        if self.carved:
            part = ("held out from training" if self.split == "validation"
                    else "the rest of train, what the model trains on")
            text += (f" carved from train ({100 * self.validation_split:g}% "
                     f"validation, stratified, split_seed={self.split_seed};"
                     f" {part})")
        if self.is_subset:
            text += (f"; stratified subset of {self.num_examples} of "
                     f"{self.split_num_examples} images "
                     f"(seed {self.subset_seed})")
        else:
            text += f"; all {self.num_examples} images"
        return text

    def split_record(self):
        """The JSON-able description of the delivered split (reports)."""
        return {
            "split": self.split,
            "description": self.describe_split(),
            "num_examples": self.num_examples,
            "split_num_examples": self.split_num_examples,
            "is_subset": self.is_subset,
            "subset_seed": self.subset_seed,
            "carved_from_train": self.carved,
            "validation_split": self.validation_split,
            "split_seed": self.split_seed,
        }


DATASETS = Registry("dataset")


# ---------------------------------------------------------------------------
# Registered loaders
# ---------------------------------------------------------------------------


def _load_cifar100(split, data_dir, source="auto", verify=True,
                   md5_table=None):
    if source not in ("auto", "local", "tfds", "keras"):
        raise ValueError(
            "cifar100 source must be 'auto', 'local', 'tfds' or 'keras'. "
            f"Received: source={source!r}"
        )
    if source == "keras":
        return cifar100.load_cifar100_keras(split)
    if source == "tfds":
        return cifar100.load_cifar100_tfds(data_dir, split)
    try:
        return cifar100.load_cifar100(data_dir, split, verify=verify,
                                      md5_table=md5_table)
    except FileNotFoundError:
        tfds_dir = data_dir is not None and (
            pathlib.Path(os.fspath(data_dir)) / cifar100.TFDS_NAME
        ).is_dir()
        if source == "auto" and tfds_dir:
            return cifar100.load_cifar100_tfds(data_dir, split)
        raise


def _load_cinic10(split, data_dir, source="auto", verify=True):
    return cinic10.load_cinic10(data_dir, split, source=source,
                                verify=verify)


def _load_image_folder(split, data_dir, image_size=None):
    if data_dir is None:
        raise FileNotFoundError(
            "The 'image_folder' dataset needs data_dir= pointing at a folder "
            "laid out as <root>/train|valid|test/<class>/<images> (or "
            "<root>/<class>/<images> for a train split only)."
        )
    return image_folder.load_image_folder_split(
        data_dir, split, image_size=image_size
    )


def _load_synthetic(split, data_dir, num_classes=10, image_size=32,
                    num_examples=None, data_seed=0):
    del data_dir  # generated
    return synthetic.load_synthetic(
        split, num_classes=num_classes, image_size=image_size,
        num_examples=num_examples, data_seed=data_seed,
    )


DATASETS.register("cifar100", DatasetSpec(
    load=_load_cifar100, splits=("train", "test"),
    label_kinds=("fine", "coarse"), normalization="cifar100"))
DATASETS.register("cinic10", DatasetSpec(
    load=_load_cinic10, splits=("train", "validation", "test"),
    normalization="cinic10"))
DATASETS.register("image_folder", DatasetSpec(
    load=_load_image_folder, splits=("train", "validation", "test"),
    normalization=None))
DATASETS.register("synthetic", DatasetSpec(
    load=_load_synthetic, splits=("train", "validation", "test"),
    normalization="synthetic", needs_data_dir=False))


# ---------------------------------------------------------------------------
# Split selection
# ---------------------------------------------------------------------------


def _resolve_normalization(normalization, spec, train_loader):
    """Returns `(Normalization, description of its source)`."""
    if isinstance(normalization, Normalization):
        return normalization, "given"
    if isinstance(normalization, str):
        return (get_normalization(normalization),
                f"registered constants {normalization!r}")
    if isinstance(normalization, dict):
        return (Normalization(mean=normalization["mean"],
                              std=normalization["std"]), "given")
    if normalization is not None:
        mean, std = normalization
        return Normalization(mean=mean, std=std), "given"
    if spec.normalization is not None:
        return (get_normalization(spec.normalization),
                f"registered constants {spec.normalization!r}")
    train = train_loader()
    return (normalization_from_images(train.images),
            f"computed from the {len(train)} training images")


def load_split(name, split, *, data_dir=None, validation_split=0.0, seed=0,
               split_seed=None, label_mode="fine", normalization=None,
               max_examples=None, subset_seed=0, **kwargs):
    """Loads one split of a registered dataset as uint8 arrays.

    Args:
        name: registered dataset name (`DATASETS.names()`).
        split: `"train"`, `"validation"` or `"test"`.
        data_dir: where the data are (see each loader); `None` = default.
        validation_split: fraction of the train split carved out
            (stratified, by `split_seed`) as `"validation"`; `"train"` then
            returns the rest.  With 0, `"validation"` is the dataset's own
            validation split (CINIC-10 `valid/`) or an error.
        seed: default for `split_seed`.
        split_seed: seed of the carve-out (defaults to `seed`); keep it
            fixed while varying `seed` to keep the same validation set.
        label_mode: `"fine"`, `"coarse"` or `"both"`.
        normalization: `None` (the dataset's constants, or statistics of the
            images the model trains on -- the train split less any
            carved validation part -- when it has none), a registered name,
            a `Normalization`, a `{"mean", "std"}` dict or a `(mean, std)`
            pair.
        max_examples: deliver a stratified random subset of this many
            examples (each class keeps its share; the same subset for a
            given `subset_seed`), e.g. to evaluate on part of a test split
            stored in class order.  `None`: the whole split.
        subset_seed: seed of that subset (fixed by default, so every run
            evaluates on the same images).
        **kwargs: passed to the dataset's loader (e.g. `source=`,
            `md5_table=`, `num_classes=`, `image_size=`, `verify=`).

    Returns:
        `(images, labels, info)`: uint8 (N, H, W, C) images, int32 labels
        (a dict for `label_mode="both"`), and a `DatasetInfo` without batch
        fields.
    """
    spec = DATASETS.get(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: {split!r}")
    if label_mode not in LABEL_MODES:
        raise ValueError(
            f"label_mode must be one of {LABEL_MODES}. "
            f"Received: label_mode={label_mode!r}"
        )
    wanted = ("fine", "coarse") if label_mode == "both" else (label_mode,)
    for kind in wanted:
        if kind not in spec.label_kinds:
            raise ValueError(
                f"Dataset {name!r} has no {kind!r} labels (it has "
                f"{spec.label_kinds}). Received: label_mode={label_mode!r}"
            )
    validation_split = float(validation_split or 0.0)
    split_seed = int(seed if split_seed is None else split_seed)
    if max_examples is not None and (
            isinstance(max_examples, bool) or int(max_examples) < 1):
        raise ValueError(
            "max_examples must be a positive integer or None. "
            f"Received: max_examples={max_examples!r}"
        )
    loaded = {}

    def load(s):
        if s not in loaded:
            loaded[s] = spec.load(s, data_dir, **kwargs)
        return loaded[s]

    def carve():
        full = load("train")
        return full, carve_validation(full.labels["fine"], validation_split,
                                      split_seed)

    def training_images():
        # The images the model trains on: train less any carved validation.
        if validation_split > 0.0:
            full, (train_idx, _) = carve()
            return full.take(train_idx)
        return load("train")

    carved = validation_split > 0.0 and split in ("train", "validation")
    if carved:
        full, (train_idx, val_idx) = carve()
        data = full.take(train_idx if split == "train" else val_idx)
    elif split not in spec.splits:
        raise ValueError(
            f"Dataset {name!r} has no {split!r} split of its own (it has "
            f"{spec.splits}). A validation split must be held out from "
            "training: set validation_split=0.1 (for example) when training "
            "so that part of train is carved out and never trained on; "
            "carving one after training would score training images."
        )
    else:
        data = load(split)
    norm, norm_source = _resolve_normalization(
        normalization, spec,
        lambda: data if split == "train" else training_images(),
    )
    split_num_examples = len(data)
    if max_examples is not None and int(max_examples) < len(data):
        data = data.take(stratified_subset(
            data.labels["fine"], int(max_examples), subset_seed))
    else:
        subset_seed = None
    if label_mode == "both":
        labels = {"fine": data.labels["fine"], "coarse": data.labels["coarse"]}
    else:
        labels = data.labels[label_mode]
    primary = "coarse" if label_mode == "coarse" else "fine"
    info = DatasetInfo(
        name=name,
        split=split,
        num_examples=len(data),
        num_classes=len(data.class_names[primary]),
        class_names=tuple(data.class_names[primary]),
        input_shape=tuple(int(d) for d in data.images.shape[1:]),
        label_mode=label_mode,
        is_generated=data.is_generated,
        source=data.source,
        normalization=norm,
        coarse_class_names=(
            tuple(data.class_names["coarse"])
            if "coarse" in data.class_names else None
        ),
        validation_split=validation_split,
        carved=carved,
        split_seed=split_seed if carved else None,
        split_num_examples=split_num_examples,
        subset_seed=None if subset_seed is None else int(subset_seed),
        normalization_source=norm_source,
    )
    if len(data) == 0:
        raise ValueError(f"Split {split!r} of {name!r} is empty.")
    return data.images, labels, info
