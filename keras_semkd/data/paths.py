"""Where datasets are looked for when no `data_dir` is given, and how a
copy looks on disk (folder names; CINIC-10's class folders).

No machine path is written in code.  The default data root is, in order:

1. the `KERAS_SEMKD_DATA` environment variable, when it is set (it is then
   the only place looked at, so an explicit setting is never second-guessed);
2. `<repo>/../shared/data`, where `<repo>` is the folder holding the
   `keras_semkd` package (a source checkout);
3. `<cwd>/../shared/data`, for runs started from the repository root.

`default_cifar100_dir()` returns the CIFAR-100 copy inside the first of these
that holds one (`cifar-100-python/` or `cifar-100-python.tar.gz`), else `None`.
This module imports neither TensorFlow nor Keras.
"""

import os
import pathlib

DATA_ENV_VAR = "KERAS_SEMKD_DATA"

CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CINIC10_FOLDERS = ("CINIC-10", "cinic-10", "cinic10")
# CINIC-10's class folders (and label order), shared by the folder loader
# (`cinic10.py`) and the tfds builder (`cinic10_builder.py`).
CINIC10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent  # keras_semkd/
_REPO_DIR = _PACKAGE_DIR.parent


def data_search_paths():
    """The candidate data roots, in the order they are searched.

    Returns:
        A list of `pathlib.Path` (they need not exist).
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return [pathlib.Path(env).expanduser()]
    candidates = [
        _REPO_DIR.parent / "shared" / "data",
        pathlib.Path.cwd().parent / "shared" / "data",
    ]
    unique = []
    for path in candidates:
        resolved = path.resolve()
        if resolved not in unique:
            unique.append(resolved)
    return unique


def default_data_dir():
    """The first existing data root of `data_search_paths()`, or `None`."""
    for path in data_search_paths():
        if path.is_dir():
            return path
    return None


def default_cifar100_dir():
    """Returns the local CIFAR-100 copy (folder or archive), or `None`.

    Looks for `cifar-100-python/` (preferred) or `cifar-100-python.tar.gz`
    in each of `data_search_paths()`.  The result can be passed as
    `data_dir` to `get_dataset("cifar100", ...)`.
    """
    for root in data_search_paths():
        folder = root / CIFAR100_FOLDER
        if folder.is_dir():
            return folder
        archive = root / CIFAR100_ARCHIVE
        if archive.is_file():
            return archive
    return None


def default_cinic10_dir():
    """Returns a local CINIC-10 folder (`train|valid|test/<class>/`) or None."""
    for root in data_search_paths():
        for name in CINIC10_FOLDERS:
            folder = root / name
            if (folder / "train").is_dir():
                return folder
    return None


def how_to_provide_data(dataset):
    """A short hint appended to "data not found" errors."""
    searched = ", ".join(str(p) for p in data_search_paths())
    return (
        f"Pass `data_dir=` explicitly, or set the {DATA_ENV_VAR} environment "
        f"variable to a folder holding the {dataset} data "
        f"(searched by default: {searched}). "
        "For a quick run without real data use the 'synthetic' dataset."
    )
