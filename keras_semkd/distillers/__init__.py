"""Distillers: Keras models that train a student against a teacher."""

from keras_semkd.distillers.distiller import Distiller
