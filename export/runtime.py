"""Moved to `export.packaging.runtime`.

A re-export for callers not yet moved: delete it once none is left.
"""

from export.packaging.runtime import (
    load_tokenizer as load_tokenizer,
)
from export.packaging.runtime import (
    onnx_classifier as onnx_classifier,
)
from export.packaging.runtime import (
    torch_classifier as torch_classifier,
)
