"""Moved to `export.training.train`.

A re-export for callers not yet moved: delete it once none is left.
"""

from export.training.train import (
    base_model_path as base_model_path,
)
