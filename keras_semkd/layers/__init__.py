"""Parameter-free attention uniformization and the SAKD semantic head."""

from keras_semkd.layers.semantic_head import SemanticHead
from keras_semkd.layers.uniformization import AttentionUniformization
from keras_semkd.layers.uniformization import adaptive_average_pool
from keras_semkd.layers.uniformization import adaptive_pool_matrix

__all__ = [
    "AttentionUniformization",
    "SemanticHead",
    "adaptive_average_pool",
    "adaptive_pool_matrix",
]
