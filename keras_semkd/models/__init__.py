"""CIFAR model zoo: functional models with named outputs.

`get(name)` builds one of RepDistiller's CIFAR architectures as a Keras
functional model whose output is a dict (`"stem"`, `"stage1"`, ...,
`"stage{i}_preact"`, `"embedding"`, `"logits"`); `names()` lists them and
`feature_keys(model)` gives the ordered stage keys.
"""

from keras_semkd.models.zoo import MODELS
from keras_semkd.models.zoo import feature_keys
from keras_semkd.models.zoo import get
from keras_semkd.models.zoo import names

__all__ = ["MODELS", "feature_keys", "get", "names"]
