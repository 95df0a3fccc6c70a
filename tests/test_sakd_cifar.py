"""SAKD trains through `Distiller.fit` on the real CIFAR-100 copy with the
loss going down (slow: run with `python -m pytest -m slow`)."""

import keras
import pytest

from keras_semkd import configs
from keras_semkd import data as data_lib
from keras_semkd.distillers import build


@pytest.mark.slow
def test_sakd_recipe_fits_cifar100_and_loss_goes_down():
    if data_lib.default_cifar100_dir() is None:
        pytest.skip("no local CIFAR-100 copy (../shared/data)")
    recipe = configs.get("resnet56-resnet20-sakd").override(
        teacher="resnet8", student="resnet8",
        **{"terms.sakd.warmup_epochs": 0})
    ds, info = data_lib.get_dataset("cifar100", "train", 64, seed=0)
    keras.utils.set_random_seed(0)
    teacher = build.build_model("resnet8", 100)
    distiller = build.build_distiller(recipe, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = distiller.fit(ds.take(40), epochs=3, verbose=0).history
    assert history["distill/sakd"][-1] < history["distill/sakd"][0]
    assert history["loss"][-1] < history["loss"][0]
