"""The algorithms on TensorFlow (imports TensorFlow)."""

from metaplug_tensorflow.algorithms.base import AdaptedModel, MetaLearner
from metaplug_tensorflow.algorithms.finetune import FineTune
from metaplug_tensorflow.algorithms.gradient import GradientMetaLearner
from metaplug_tensorflow.algorithms.maml import ANIL, FOMAML, MAML, MetaSGD
from metaplug_tensorflow.algorithms.mamlpp import MAMLPlusPlus
from metaplug_tensorflow.algorithms.metalstm import MetaLSTM
from metaplug_tensorflow.algorithms.protonet import ProtoNet
from metaplug_tensorflow.algorithms.r2d2 import R2D2
from metaplug_tensorflow.algorithms.relationnet import RelationNet
from metaplug_tensorflow.algorithms.reptile import Reptile

__all__ = [
    "ANIL",
    "FOMAML",
    "MAML",
    "R2D2",
    "AdaptedModel",
    "FineTune",
    "GradientMetaLearner",
    "MAMLPlusPlus",
    "MetaLSTM",
    "MetaLearner",
    "MetaSGD",
    "ProtoNet",
    "RelationNet",
    "Reptile",
]
