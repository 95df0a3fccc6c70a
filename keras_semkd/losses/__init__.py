"""Distillation losses, one module per method, looked up by name."""

from keras_semkd.losses.base import LOSSES
from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import get
from keras_semkd.losses.base import register_loss
from keras_semkd.losses.kd import KDLoss
from keras_semkd.losses.kd import kd_loss


def names():
    """Names of the registered distillation losses."""
    return LOSSES.names()
