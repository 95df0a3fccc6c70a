"""keras-tuner search over distillation recipes (hp values -> overrides)."""

from keras_semkd.tuning.hypermodel import OBJECTIVE
from keras_semkd.tuning.hypermodel import DistillationHyperModel
from keras_semkd.tuning.hypermodel import check_validation_split
from keras_semkd.tuning.hypermodel import objective
from keras_semkd.tuning.search import TUNERS
from keras_semkd.tuning.search import best_recipe
from keras_semkd.tuning.search import export_best_recipe
from keras_semkd.tuning.search import make_tuner
from keras_semkd.tuning.search import tune
from keras_semkd.tuning.search_space import HP_TYPES
from keras_semkd.tuning.search_space import declare
from keras_semkd.tuning.search_space import default_search_space
from keras_semkd.tuning.search_space import overrides_from_values
from keras_semkd.tuning.search_space import validate_search_space
