"""Distillers: Keras models that train a student against a teacher."""

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.distillers.taps import AUTO
from keras_semkd.distillers.taps import layer_paths
from keras_semkd.distillers.taps import tapped_view
