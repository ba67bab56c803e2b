"""Moved to `export.training.data`.

A re-export for callers not yet moved: delete it once none is left.
"""

from export.training.data import (
    DATA_DIR as DATA_DIR,
)
from export.training.data import (
    SPLITS as SPLITS,
)
from export.training.data import (
    DataError as DataError,
)
from export.training.data import (
    Split as Split,
)
from export.training.data import (
    load_dataset as load_dataset,
)
from export.training.data import (
    load_label_names as load_label_names,
)
from export.training.data import (
    load_split as load_split,
)
