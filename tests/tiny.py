"""Tiny functional models with the zoo's output contract, for fast tests.

`tiny_model(widths=(4, 8), spatial=8)` returns a keras.Model taking
(spatial, spatial, 3) images and returning a dict with "stage1", ...,
"stage{i}_preact", "embedding" and "logits", each stage halving the spatial
size after the first, like the CIFAR backbones.
"""

import keras
import numpy as np
from keras import layers


def tiny_model(name="tiny", widths=(4, 8), num_classes=5, spatial=8, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((spatial, spatial, 3), name="images")
    h = inputs
    outputs = {}
    for i, width in enumerate(widths, start=1):
        stride = 1 if i == 1 else 2
        h = layers.Conv2D(width, 3, strides=stride, padding="same",
                          use_bias=False, name=f"{name}_conv{i}")(h)
        pre = layers.BatchNormalization(name=f"{name}_bn{i}")(h)
        h = layers.ReLU(name=f"{name}_relu{i}")(pre)
        outputs[f"stage{i}_preact"] = pre
        outputs[f"stage{i}"] = h
    emb = layers.GlobalAveragePooling2D(name=f"{name}_pool")(h)
    outputs["embedding"] = emb
    outputs["logits"] = layers.Dense(num_classes, name=f"{name}_fc")(emb)
    return keras.Model(inputs, outputs, name=name)


def tiny_batch(batch=8, spatial=8, num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, spatial, spatial, 3)).astype("float32")
    y = rng.integers(0, num_classes, size=(batch,)).astype("int32")
    return x, y


def tiny_kd_recipe(name, teacher_weights, seed, batch_size=16, images=32):
    """A one-epoch resnet8 → resnet8 KD recipe on `images` generated
    training images (half as many for evaluation)."""
    from keras_semkd import configs

    return configs.Recipe(
        name=name, teacher="resnet8", student="resnet8",
        terms=configs.METHODS["kd"][1], student_loss_weight=0.1, epochs=1,
        data=configs.DataConfig(dataset="synthetic", batch_size=batch_size,
                                limit_train=images, limit_eval=images // 2),
        num_classes=10, seed=seed, teacher_weights=teacher_weights)
