"""keras_semkd: semantic-aware knowledge distillation for Keras 3."""

__version__ = "0.1.0"
