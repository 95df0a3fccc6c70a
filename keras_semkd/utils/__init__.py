"""Shared helpers below the layers, models and losses (`numerics`)."""
