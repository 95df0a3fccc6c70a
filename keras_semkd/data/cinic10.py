"""CINIC-10 from its PNG folders or from a prepared tfds folder.

The folder source decodes the images with Pillow (no TensorFlow); the tfds
source reads what `prepare_tfds_cinic10` built with the `cinic10` builder
(`cinic10_builder.py`), always with `download=False`.

The `cinic10` dataset normalizes with CINIC-10's own mean/std, so it checks
that the data *are* CINIC-10 (its ten class folders and 9,000 images per
class in every split) before using them; other image folders (CIFAR-10 as
JPGs, a subset) are refused and pointed to the `image_folder` dataset,
whose statistics are computed from its own train split.  `verify=False`
skips the size check (a deliberate subset of CINIC-10, test fakes).
"""

import os
import pathlib

import numpy as np

from keras_semkd.data import image_folder
from keras_semkd.data import paths
from keras_semkd.data.arrays import LabeledImages

CINIC10_CLASSES = paths.CINIC10_CLASSES
CINIC10_SPLIT_SIZE = 90000
CINIC10_PER_CLASS = CINIC10_SPLIT_SIZE // len(CINIC10_CLASSES)
TFDS_NAME = "cinic10"
SPLITS = ("train", "validation", "test")


def resolve_cinic10(data_dir=None):
    """Finds a CINIC-10 copy: PNG folders or a prepared tfds data dir.

    Returns:
        `(kind, path)` with kind `"folder"` (a root holding `train/`,
        `valid/`, `test/`) or `"tfds"` (a data dir holding `cinic10/`).

    Raises:
        FileNotFoundError: naming the path and how to provide the data.
    """
    if data_dir is None:
        data_dir = paths.default_cinic10_dir()
        if data_dir is None:
            raise FileNotFoundError(
                "No local CINIC-10 copy found. "
                + paths.how_to_provide_data(
                    "CINIC-10 (train|valid|test/<class>/*.png)")
            )
    root = pathlib.Path(os.fspath(data_dir)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"CINIC-10 data directory {root} does not exist. "
            + paths.how_to_provide_data("CINIC-10")
        )
    if (root / TFDS_NAME).is_dir():
        return "tfds", root
    if image_folder.has_split_folders(root):
        return "folder", root
    for name in paths.CINIC10_FOLDERS:
        if image_folder.has_split_folders(root / name):
            return "folder", root / name
    raise FileNotFoundError(
        f"{root} holds neither CINIC-10 PNG folders (train|valid|test/"
        f"<class>/*.png) nor a prepared tfds '{TFDS_NAME}' folder. "
        + paths.how_to_provide_data("CINIC-10")
    )


def check_cinic10_counts(labels, where, split):
    """Raises a `ValueError` unless `labels` hold 9,000 examples of each
    CINIC-10 class (the official size of every split)."""
    counts = np.bincount(np.asarray(labels), minlength=len(CINIC10_CLASSES))
    if counts.shape[0] == len(CINIC10_CLASSES) and np.all(
            counts == CINIC10_PER_CLASS):
        return
    per_class = ", ".join(
        f"{c}: {int(k)}" for c, k in zip(CINIC10_CLASSES, counts))
    raise ValueError(
        f"{where} does not hold CINIC-10: its {split!r} split has "
        f"{int(counts.sum())} images ({per_class}); every "
        f"CINIC-10 split has {CINIC10_SPLIT_SIZE} ({CINIC10_PER_CLASS} per "
        "class). CINIC-10's mean/std would be wrong for other images: use "
        "dataset='image_folder' (statistics computed from its own train "
        "split), or pass verify=False for a deliberate subset of CINIC-10."
    )


def load_cinic10(data_dir=None, split="train", *, source="auto",
                 verify=True):
    """Loads one CINIC-10 split as `LabeledImages`.

    Args:
        data_dir: the CINIC-10 root (`train|valid|test/<class>/*.png`) or a
            tfds data dir with a prepared `cinic10`; `None` searches the
            default data root.
        split: `"train"`, `"validation"` (the official `valid/` folder) or
            `"test"`.
        source: `"auto"`, `"folder"` or `"tfds"`.
        verify: check that the split has CINIC-10's size (9,000 images per
            class) before decoding it; its class folders are always
            checked.

    Raises:
        ValueError: the class folders are not CINIC-10's, or (`verify`) the
            split does not have CINIC-10's size.
    """
    if split not in SPLITS:
        raise ValueError(
            f"CINIC-10 has splits {SPLITS}. Received: split={split!r}"
        )
    if source not in ("auto", "folder", "tfds"):
        raise ValueError(
            "source must be 'auto', 'folder' or 'tfds'. "
            f"Received: source={source!r}"
        )
    kind, root = resolve_cinic10(data_dir)
    if source != "auto":
        kind = source
    if kind == "tfds":
        data = load_cinic10_tfds(root, split)
        if verify:
            check_cinic10_counts(data.labels["fine"], data.source, split)
        return data
    if verify:
        folder = image_folder.find_split_folder(root, split)
        if folder is not None:  # else load_image_folder_split explains
            _, labels, found = image_folder.scan_image_folder(folder)
            image_folder.check_class_names(folder, found, CINIC10_CLASSES,
                                           what="the CINIC-10 classes")
            check_cinic10_counts(labels, root, split)
    return image_folder.load_image_folder_split(
        root, split, class_names=CINIC10_CLASSES
    )


def load_cinic10_tfds(data_dir, split="train"):
    """Loads a prepared tfds `cinic10` (never downloads)."""
    import tensorflow_datasets as tfds

    from keras_semkd.data import cinic10_builder

    builder = cinic10_builder.Cinic10(data_dir=os.fspath(data_dir))
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"No prepared tfds '{TFDS_NAME}' in {data_dir} (looked for "
            f"{builder.data_path}). Build it offline with "
            "keras_semkd.data.prepare_tfds_cinic10(manual_dir, data_dir)."
        )
    arrays = tfds.as_numpy(
        tfds.load(TFDS_NAME, split=split, data_dir=os.fspath(data_dir),
                  download=False, try_gcs=False, batch_size=-1)
    )
    # tfds stores examples in hashed-key order; sort by "<class>/<file>" to
    # match the order of the folder source.
    order = np.argsort(arrays["filename"], kind="stable")
    return LabeledImages(
        images=np.ascontiguousarray(arrays["image"][order], dtype=np.uint8),
        labels={"fine": arrays["label"][order].astype(np.int32)},
        class_names={"fine": tuple(builder.info.features["label"].names)},
        source=f"tfds:{builder.data_path} [{split}]",
    )


def prepare_tfds_cinic10(manual_dir, data_dir):
    """Builds tfds `cinic10` into `data_dir` from the PNG folders.

    Args:
        manual_dir: the CINIC-10 root (`train|valid|test/<class>/*.png`).
        data_dir: the tfds data dir to write (`<data_dir>/cinic10/1.0.0`).

    Returns:
        The prepared version folder.
    """
    import tensorflow_datasets as tfds

    from keras_semkd.data import cinic10_builder

    manual_dir = pathlib.Path(os.fspath(manual_dir)).expanduser()
    if not manual_dir.is_dir():
        raise FileNotFoundError(
            f"CINIC-10 manual directory {manual_dir} does not exist."
        )
    builder = cinic10_builder.Cinic10(data_dir=os.fspath(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir), try_download_gcs=False
        )
    )
    return builder.data_path
