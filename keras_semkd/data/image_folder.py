"""Folders of images laid out as `<root>/<class>/*.png` (NumPy + Pillow).

`load_image_folder(root)` decodes every image into one uint8 NHWC array
(class names are the sorted sub-folder names), so the pipelines can cache
the decoded pixels in memory like CIFAR.  A dataset with split folders
(`train|valid|test/<class>/...`, the CINIC-10 layout) is read split by
split with `load_image_folder_split(root, split)`; the classes of every
split are the train split's, matched *by folder name* (label `i` means the
same class in every split), and a split that lacks a class folder or has
one train does not have is an error naming those classes.

Errors are raised up front, naming the offending path: a missing root, a
root without class folders, a class folder without images, an unreadable
image, or images of different sizes when no `image_size` is given.
Grayscale / palette / RGBA images are converted to RGB (CINIC-10 has a few
grayscale PNGs).  No TensorFlow import.

Decoded-image cache: decoding is the slow part (CINIC-10 is 270,000 PNGs, a
CIFAR-size folder 60,000), so the decoded uint8 array of a folder is saved
once as `<cache dir>/<key>.npy` and a later load — in any process — reads
that file instead. The key hashes the resize size and every image's path,
size and modification time, so adding, removing or touching an image (or
asking another `image_size`) decodes again; labels and class names are not
cached (they come from the folder names every time). The cache dir is
`$KERAS_SEMKD_CACHE/image_folder` when that variable is set (`off` turns
the cache off), else `~/.cache/keras_semkd/image_folder`; an unwritable
cache dir only costs the speed-up. Measured in docs/data.md.
"""

import concurrent.futures
import hashlib
import json
import os
import pathlib

import numpy as np
from absl import logging

from keras_semkd.data.arrays import LabeledImages

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

# split name -> folder names accepted for it, in order of preference.
SPLIT_FOLDERS = {
    "train": ("train",),
    "validation": ("valid", "validation", "val"),
    "test": ("test",),
}


def _is_image(name):
    return not name.startswith(".") and name.lower().endswith(
        IMAGE_EXTENSIONS
    )


def class_folder_names(root):
    """The sorted class sub-folder names of `root` (no image is read)."""
    root = pathlib.Path(os.fspath(root)).expanduser()
    return tuple(sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".")
    ))


def check_class_names(root, found, expected, what="the expected classes"):
    """Raises a `ValueError` naming the missing and unexpected class
    folders when the set of class folders `found` under `root` differs
    from `expected`."""
    missing = [c for c in expected if c not in set(found)]
    unexpected = [c for c in found if c not in set(expected)]
    if missing or unexpected:
        raise ValueError(
            f"Class folders of {root} do not match {what}: missing "
            f"{missing}, unexpected {unexpected} (expected "
            f"{list(expected)}). Classes are matched by folder name; every "
            "split needs one folder per class."
        )


def scan_image_folder(root):
    """Lists the images of a `<root>/<class>/*` folder.

    Returns:
        `(files, labels, class_names)`: sorted file paths, their int32 class
        indices and the sorted class-folder names.

    Raises:
        FileNotFoundError: `root` does not exist.
        ValueError: no class folders, or a class folder without images.
    """
    root = pathlib.Path(os.fspath(root)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Image folder {root} does not exist (expected "
            "<root>/<class_name>/<image files>)."
        )
    class_names = class_folder_names(root)
    if not class_names:
        raise ValueError(
            f"Image folder {root} has no class sub-folders (expected "
            "<root>/<class_name>/<image files>)."
        )
    files, labels = [], []
    for index, name in enumerate(class_names):
        folder = root / name
        images = sorted(f for f in os.listdir(folder) if _is_image(f))
        if not images:
            raise ValueError(
                f"Class folder {folder} holds no images (accepted "
                f"extensions: {', '.join(IMAGE_EXTENSIONS)})."
            )
        files.extend(str(folder / f) for f in images)
        labels.extend([index] * len(images))
    return files, np.asarray(labels, np.int32), tuple(class_names)


def decode_image(path, image_size=None):
    """Decodes one image file to a uint8 (H, W, 3) RGB array with Pillow.

    Args:
        path: the image file.
        image_size: optional `(height, width)` to resize to (bilinear).

    Raises:
        ValueError: the file cannot be read as an image (names the file).
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if image_size is not None and img.size != (
                image_size[1], image_size[0]
            ):
                img = img.resize((image_size[1], image_size[0]),
                                 Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise ValueError(
            f"Could not read image {path}: {type(e).__name__}: {e}"
        ) from e


def _decode_all(files, image_size):
    if len(files) < 256:
        return [decode_image(f, image_size) for f in files]
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda f: decode_image(f, image_size), files,
                             chunksize=64))


CACHE_ENV_VAR = "KERAS_SEMKD_CACHE"
_CACHE_OFF = ("off", "0", "none", "false")
_CACHE_FORMAT = 1


def cache_dir():
    """Where decoded image folders are cached, or `None` when off."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env is not None and env.strip().lower() in _CACHE_OFF:
        return None
    root = (pathlib.Path(env).expanduser() if env
            else pathlib.Path.home() / ".cache" / "keras_semkd")
    return root / "image_folder"


def _cache_key(files, image_size):
    digest = hashlib.sha256(json.dumps({
        "format": _CACHE_FORMAT,
        "image_size": list(image_size) if image_size is not None else None,
    }).encode())
    for path in files:
        st = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{st.st_size}\0"
                      f"{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:40]


def _read_cache(path, count):
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if images.ndim != 4 or images.shape[0] != count or \
            images.dtype != np.uint8:
        return None
    return images


def _write_cache(path, images):
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.save(f, images, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as e:
        logging.warning("Could not cache decoded images in %s (%s); the "
                        "next load decodes them again.", path, e)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _decode_checked(files, image_size):
    decoded = _decode_all(files, image_size)
    first = decoded[0].shape
    for path, img in zip(files, decoded):
        if img.shape != first:
            raise ValueError(
                f"Image {path} has shape {img.shape}, but {files[0]} has "
                f"{first}; pass image_size=(height, width) to resize."
            )
    return np.stack(decoded)


def check_image_size(image_size):
    """`(height, width)` of positive ints (an int means square), or
    `None`; raises `ValueError` naming what was received."""
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) \
        else image_size
    try:
        size = tuple(size)
    except TypeError:
        size = None
    if (size is None or len(size) != 2 or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool)
            and d >= 1 for d in size)):
        raise ValueError(
            "image_size must be (height, width) with positive integers, or "
            f"one integer for square images. Received: "
            f"image_size={image_size!r}")
    return int(size[0]), int(size[1])


def load_image_folder(root, *, image_size=None, class_names=None,
                      source=None, cache=True):
    """Decodes a `<root>/<class>/*` folder into a `LabeledImages`.

    Args:
        root: the folder.
        image_size: optional `(height, width)` (or one int, square);
            every image is resized to it on decode (bilinear). Without it
            every image must have the size of the first one.
        class_names: optional expected class names: the sub-folders must
            be exactly these (e.g. a CINIC-10 copy, or the train split's
            classes for another split), and label `i` is the folder named
            `class_names[i]`.
        source: description stored in the result (defaults to `root`).
        cache: read/write the decoded-image cache (module docstring);
            `False` always decodes.

    Returns:
        `LabeledImages` with uint8 (N, H, W, 3) images and `"fine"` labels.

    Raises:
        ValueError: `class_names` is given and a class folder is missing or
            unexpected (naming them).
    """
    image_size = check_image_size(image_size)
    files, labels, found = scan_image_folder(root)
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        check_class_names(root, found, class_names)
        index = {name: i for i, name in enumerate(class_names)}
        labels = np.asarray([index[name] for name in found],
                            np.int32)[labels]
        found = class_names
    folder = cache_dir() if cache else None
    path = (folder / f"{_cache_key(files, image_size)}.npy"
            if folder is not None else None)
    images = _read_cache(path, len(files)) if path is not None and \
        path.is_file() else None
    if images is None:
        images = _decode_checked(files, image_size)
        if path is not None:
            _write_cache(path, images)
    return LabeledImages(
        images=images,
        labels={"fine": labels},
        class_names={"fine": found},
        source=str(source or root),
    )


def find_split_folder(root, split):
    """The sub-folder of `root` holding `split`, or `None`."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(
            f"split must be one of {sorted(SPLIT_FOLDERS)}. "
            f"Received: split={split!r}"
        )
    root = pathlib.Path(os.fspath(root)).expanduser()
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def has_split_folders(root):
    """Whether `root` follows the `train|valid|test/<class>/` layout."""
    return find_split_folder(root, "train") is not None


def load_image_folder_split(root, split, *, image_size=None,
                            class_names=None, cache=True):
    """Loads `split` from a `train|valid|test/<class>/*` folder.

    A root with no split folders is itself the `"train"` split.  The
    classes of a validation or test split are the train split's (matched
    by folder name) unless `class_names` is given.

    Raises:
        FileNotFoundError: `root` or the split folder is missing.
        ValueError: the split's class folders differ from the train split's
            (or from `class_names`), naming the missing / unexpected ones.
    """
    root = pathlib.Path(os.fspath(root)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Image folder {root} does not exist (expected "
            "<root>/train|valid|test/<class_name>/<image files>)."
        )
    flat = not has_split_folders(root)
    # A flat <root>/<class>/ folder is a train split only: a class folder
    # that happens to be named "test" or "val" is not a split.
    folder = None if flat and split != "train" else find_split_folder(
        root, split)
    if folder is None:
        if split == "train" and flat:
            folder = root
        else:
            hint = (" A validation split must be held out from training: "
                    "add one of those folders, or train with "
                    "validation_split > 0 to carve one out of train."
                    if split == "validation" else "")
            raise FileNotFoundError(
                f"{root} has no folder for split {split!r} (looked for "
                f"{', '.join(SPLIT_FOLDERS[split])}).{hint}"
            )
    if class_names is None and split != "train":
        train_folder = find_split_folder(root, "train")
        if train_folder is not None:
            class_names = class_folder_names(train_folder)
            check_class_names(folder, class_folder_names(folder), class_names,
                              what=f"the train split's classes "
                                   f"({train_folder})")
    return load_image_folder(
        folder, image_size=image_size, class_names=class_names,
        source=f"{folder} [{split}]", cache=cache,
    )
