"""Moved to `export.training.calibration`.

A re-export for callers not yet moved: delete it once none is left.
"""

from export.training.calibration import (
    calibrated_probabilities as calibrated_probabilities,
)
