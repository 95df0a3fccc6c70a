"""Typed experiment configs and the registry of named recipes (no TF)."""

from keras_semkd.configs.experiment import DataConfig
from keras_semkd.configs.experiment import OptimizerConfig
from keras_semkd.configs.experiment import Recipe
from keras_semkd.configs.experiment import Term
from keras_semkd.configs.recipes import METHODS
from keras_semkd.configs.recipes import RECIPES
from keras_semkd.configs.recipes import STANDARD_PAIRS
from keras_semkd.configs.recipes import get
from keras_semkd.configs.recipes import make_recipe
from keras_semkd.configs.recipes import names
