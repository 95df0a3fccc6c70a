"""A small *generated* image dataset that a model can learn (NumPy only).

Used when no real dataset is available (README quick start, smoke tests).
Each class `c` has its own colour (hue `c / num_classes`) and stripe
pattern (orientation and frequency from `c`); every image adds a random
phase, brightness jitter and pixel noise.  A small CNN separates the classes
in a few epochs.  The data are generated deterministically from
`(data_seed, split)`, so the same arguments give the same images; the
resulting `DatasetInfo.is_generated` is `True`.
"""

import colorsys

import numpy as np

from keras_semkd.data.arrays import LabeledImages

DEFAULT_NUM_EXAMPLES = {"train": 2560, "validation": 512, "test": 512}
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}


def synthetic_images(num_examples, num_classes=10, image_size=32, seed=0):
    """Generates `(images, labels)`: uint8 (N, S, S, 3) and int32 (N,).

    Labels are balanced (cycled then shuffled).
    """
    if num_classes < 2:
        raise ValueError(
            f"num_classes must be >= 2. Received: num_classes={num_classes}"
        )
    if num_examples < 1 or image_size < 4:
        raise ValueError(
            "num_examples must be >= 1 and image_size >= 4. Received: "
            f"num_examples={num_examples}, image_size={image_size}"
        )
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_examples) % num_classes)
    colours = np.array(
        [colorsys.hsv_to_rgb(c / num_classes, 0.75, 0.85)
         for c in range(num_classes)],
        np.float32,
    )
    angles = (np.arange(num_classes) % 4) * (np.pi / 4)
    freqs = 1.0 + (np.arange(num_classes) // 4) % 3
    grid = np.linspace(0.0, 2.0 * np.pi, image_size, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    proj = (np.cos(angles)[:, None, None] * xx
            + np.sin(angles)[:, None, None] * yy)           # (K, S, S)
    phase = rng.uniform(0, 2 * np.pi, num_examples).astype(np.float32)
    stripes = np.sin(freqs[labels, None, None] * proj[labels]
                     + phase[:, None, None])               # (N, S, S)
    brightness = rng.uniform(0.8, 1.2, (num_examples, 1, 1, 1))
    images = (colours[labels][:, None, None, :] * brightness.astype(
        np.float32)) * (0.75 + 0.25 * stripes[..., None])
    noise = rng.standard_normal(images.shape, dtype=np.float32)
    images += 0.06 * noise
    images = np.clip(images * 255.0, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int32)


def load_synthetic(split="train", *, num_classes=10, image_size=32,
                   num_examples=None, data_seed=0):
    """Generated `LabeledImages` for `split` (`train`/`validation`/`test`).

    Args:
        split: selects an independent stream of the generator.
        num_classes: number of classes (>= 2).
        image_size: height and width.
        num_examples: examples in this split; default 2560 for train, 512
            for validation and test.
        data_seed: seed of the generator (the content, not the shuffling).
    """
    if split not in _SPLIT_STREAM:
        raise ValueError(
            f"synthetic has splits {tuple(_SPLIT_STREAM)}. "
            f"Received: split={split!r}"
        )
    n = DEFAULT_NUM_EXAMPLES[split] if num_examples is None else num_examples
    images, labels = synthetic_images(
        int(n), num_classes, image_size,
        seed=[int(data_seed), _SPLIT_STREAM[split], 0x5717],
    )
    return LabeledImages(
        images=images,
        labels={"fine": labels},
        class_names={"fine": tuple(f"class_{c}" for c in range(num_classes))},
        source=(
            f"GENERATED synthetic data ({num_classes} classes, "
            f"{image_size}x{image_size}, data_seed={data_seed}) [{split}]"
        ),
        is_generated=True,
    )
