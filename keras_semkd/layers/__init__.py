"""Parameter-free attention uniformization and the SAKD semantic head."""

from keras_semkd.layers.semantic_head import SemanticHead
from keras_semkd.layers.uniformization import AttentionUniformization

__all__ = [
    "AttentionUniformization",
    "SemanticHead",
]
