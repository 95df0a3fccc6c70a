"""Root pytest configuration: markers and a quiet, deterministic setup."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long test, excluded from the default suite "
        "(run with `-m slow`)"
    )
