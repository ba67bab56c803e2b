"""Moved to `export.packaging.tensorrt`.

A re-export for callers not yet moved: delete it once none is left.
"""

from export.packaging.tensorrt import (
    BUILD_SCRIPT as BUILD_SCRIPT,
)
from export.packaging.tensorrt import (
    PLAN_FILE as PLAN_FILE,
)
