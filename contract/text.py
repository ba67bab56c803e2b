"""Text normalisation shared by the gateway's cache key and the Triton tokenizer model.

Both apply the same function, so two texts with one cache key are exactly the texts the model cannot
tell apart.
"""

from __future__ import annotations

import unicodedata


def normalize(text: str) -> str:
    """NFC and outer whitespace only: anything stronger (case, inner spaces) could change the answer."""
    return unicodedata.normalize("NFC", text).strip()
