"""MD5 verification of local dataset files, cached per file version.

Hashing the 155 MB CIFAR-100 train pickle costs ~0.3 s, so a successful
verification is remembered in-process under `(resolved path, size,
mtime_ns, expected md5)`: a file that is replaced or touched is hashed again.
Failures are never cached.  No TensorFlow import.
"""

import hashlib
import os
import threading

_CHUNK = 4 << 20
_VERIFIED = set()
_LOCK = threading.Lock()


class ChecksumError(ValueError):
    """A local file does not have its expected MD5 sum.

    Attributes:
        path: the file.
        expected: the expected hex digest.
        actual: the computed hex digest.
    """

    def __init__(self, path, expected, actual, size=None, hint=""):
        self.path = str(path)
        self.expected = expected
        self.actual = actual
        size_text = f" ({size:,} bytes)" if size is not None else ""
        super().__init__(
            f"MD5 mismatch for {self.path}{size_text}: expected {expected}, "
            f"got {actual}. The file is corrupted, truncated or not the "
            f"official one.{(' ' + hint) if hint else ''}"
        )


def _file_key(path, expected):
    path = os.path.realpath(os.fspath(path))
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns, expected.lower())


def md5_of_bytes(data):
    """Hex MD5 of an in-memory bytes-like object."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_of_file(path):
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_verified(path, expected):
    """Whether `path` (this size and mtime) already matched `expected`."""
    try:
        key = _file_key(path, expected)
    except OSError:
        return False
    with _LOCK:
        return key in _VERIFIED


def verify_md5(path, expected, data=None, hint=""):
    """Checks that `path` has MD5 `expected`; raises `ChecksumError` if not.

    Args:
        path: the file to check (used for the cache key and the message).
        expected: expected hex digest, or `None` to skip the check.
        data: optional bytes already read from `path`, hashed instead of
            re-reading the file.
        hint: extra text for the error message.

    Returns:
        `True` if the file was checked (or found in the cache), `False` if
        `expected` is `None`.
    """
    if expected is None:
        return False
    key = _file_key(path, expected)
    with _LOCK:
        if key in _VERIFIED:
            return True
    actual = md5_of_bytes(data) if data is not None else md5_of_file(path)
    if actual != expected.lower():
        raise ChecksumError(path, expected, actual, size=key[1], hint=hint)
    with _LOCK:
        _VERIFIED.add(key)
    return True


def clear_cache():
    """Forgets every cached verification (mainly for tests)."""
    with _LOCK:
        _VERIFIED.clear()
