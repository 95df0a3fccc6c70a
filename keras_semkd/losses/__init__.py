"""Distillation losses, one module per method, looked up by name."""

from keras_semkd.losses.at import ATLoss
from keras_semkd.losses.at import at_loss
from keras_semkd.losses.base import LOSSES
from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import get
from keras_semkd.losses.base import register_loss
from keras_semkd.losses.cc import CCLoss
from keras_semkd.losses.cc import cc_loss
from keras_semkd.losses.crd import CRDLoss
from keras_semkd.losses.crd import crd_loss
from keras_semkd.losses.dkd import DKDLoss
from keras_semkd.losses.dkd import dkd_loss
from keras_semkd.losses.fitnet import ConvReg
from keras_semkd.losses.fitnet import FitNetLoss
from keras_semkd.losses.fitnet import hint_loss
from keras_semkd.losses.kd import KDLoss
from keras_semkd.losses.kd import kd_loss
from keras_semkd.losses.nst import NSTLoss
from keras_semkd.losses.nst import nst_loss
from keras_semkd.losses.pkt import PKTLoss
from keras_semkd.losses.pkt import pkt_loss
from keras_semkd.losses.reviewkd import ReviewKDLoss
from keras_semkd.losses.reviewkd import hcl_loss
from keras_semkd.losses.rkd import RKDLoss
from keras_semkd.losses.rkd import rkd_loss
from keras_semkd.losses.sakd import SAKDLoss
from keras_semkd.losses.sakd import alignment_distance
from keras_semkd.losses.sakd import semantic_guidance
from keras_semkd.losses.sp import SPLoss
from keras_semkd.losses.sp import sp_loss
from keras_semkd.losses.vid import VIDLoss
from keras_semkd.losses.vid import VIDRegressor
from keras_semkd.losses.vid import vid_loss


def names():
    """Names of the registered distillation losses."""
    return LOSSES.names()
