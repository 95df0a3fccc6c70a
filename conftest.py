"""Root pytest configuration: markers and a quiet, deterministic setup."""

import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Decoded image folders are cached (keras_semkd.data.image_folder): tests
# cache into a folder of their own, removed at the end, never the user's.
_CACHE = None
if "KERAS_SEMKD_CACHE" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="keras_semkd_test_cache_")
    os.environ["KERAS_SEMKD_CACHE"] = _CACHE


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long test, excluded from the default suite "
        "(run with `-m slow`)"
    )


def pytest_unconfigure(config):
    if _CACHE is not None:
        shutil.rmtree(_CACHE, ignore_errors=True)
