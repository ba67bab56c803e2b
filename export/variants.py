"""Moved to `export.packaging.variants`.

A re-export for callers not yet moved: delete it once none is left.
"""

from export.packaging.variants import (
    VARIANT_FILES as VARIANT_FILES,
)
