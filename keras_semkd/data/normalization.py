"""Per-dataset normalization constants, importable without TensorFlow.

A model sees `(pixel / 255 - mean) / std` per channel.  Export code can put
the same transform in a serving graph:

```python
from keras_semkd.data.normalization import get_normalization

norm = get_normalization("cifar100")
x = (raw_uint8_images / 255.0 - norm.mean) / norm.std
# or, equivalently and fused: x = raw * norm.scale + norm.offset
```
"""

import dataclasses

import numpy as np

from keras_semkd.registry import Registry


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel mean and standard deviation, in [0, 1] pixel units.

    Attributes:
        mean: per-channel mean (RGB).
        std: per-channel standard deviation (RGB).
    """

    mean: tuple
    std: tuple

    def __post_init__(self):
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if len(mean) != len(std):
            raise ValueError(
                "mean and std must have the same length. "
                f"Received: mean={mean}, std={std}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive. Received: std={std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def scale(self):
        """Per-channel factor applied to raw 0..255 pixels: 1 / (255 std)."""
        return tuple(1.0 / (255.0 * s) for s in self.std)

    @property
    def offset(self):
        """Per-channel offset after scaling: -mean / std."""
        return tuple(-m / s for m, s in zip(self.mean, self.std))

    def apply_numpy(self, images, out=None):
        """Normalizes raw 0..255 images (..., C) to float32 with NumPy."""
        scale = np.asarray(self.scale, dtype=np.float32)
        offset = np.asarray(self.offset, dtype=np.float32)
        x = np.multiply(images, scale, out=out, dtype=np.float32)
        x += offset
        return x


NORMALIZATIONS = Registry("normalization")

NORMALIZATIONS.register(
    "cifar100",
    Normalization(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
)
NORMALIZATIONS.register(
    "cinic10",
    Normalization(
        mean=(0.47889522, 0.47227842, 0.43047404),
        std=(0.24205776, 0.23828046, 0.25874835),
    ),
)
# Generated data (see `synthetic.py`): pixels spread roughly over [0, 1].
NORMALIZATIONS.register(
    "synthetic", Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
)


def get_normalization(name):
    """Returns the `Normalization` registered for dataset `name`.

    Raises:
        KeyError: listing the known dataset names.
    """
    return NORMALIZATIONS.get(name)


def normalization_from_images(images):
    """Computes a `Normalization` from uint8 NHWC images (e.g. a train set)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            "Expected a non-empty batch of NHWC images. "
            f"Received: shape={images.shape}"
        )
    channels = images.shape[-1]
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    for start in range(0, images.shape[0], 4096):  # bounded memory
        chunk = images[start:start + 4096].reshape(-1, channels)
        chunk = chunk.astype(np.float64) / 255.0
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    count = images.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    std = np.where(std > 1e-6, std, 1.0)
    return Normalization(mean=tuple(mean), std=tuple(std))
