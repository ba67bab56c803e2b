"""Load-test payloads: real GoEmotions test-split texts with their natural length mix."""

from __future__ import annotations

import random
from pathlib import Path

from export.training.data import DATA_DIR, load_split


def load_texts(data_dir: Path = DATA_DIR, limit: int | None = None, seed: int = 0) -> list[str]:
    """Test-split texts in a seeded shuffled order (the real length mix: short replies to long posts)."""
    texts = list(load_split("test", data_dir).texts)
    random.Random(seed).shuffle(texts)
    return texts[:limit] if limit else texts


class PayloadPicker:
    """Draws texts for load: a share of repeats from a small hot set (to exercise caches), the rest unique.

    Unique texts are real corpus texts with a short tag appended: many users walking a 5k-text corpus
    would otherwise send each other's texts and turn "fresh" requests into cache hits.
    """

    def __init__(
        self, texts: list[str], repeat_share: float, hot_set: int = 20, seed: int | None = None
    ) -> None:
        if not texts:
            raise ValueError("no texts to send")
        if not 0 <= repeat_share <= 1:
            raise ValueError(f"repeat share must be in [0, 1], got {repeat_share}")
        self.texts = texts
        self.hot = texts[:hot_set]
        self.repeat_share = repeat_share
        self.rng = random.Random(seed)
        self.salt = f"{self.rng.getrandbits(32):08x}"
        self.position = self.rng.randrange(len(texts))
        self.sent = 0

    def fresh(self) -> str:
        text = self.texts[self.position % len(self.texts)]
        self.position += 1
        self.sent += 1
        return f"{text} #{self.salt}{self.sent}"

    def next(self) -> str:
        return self.rng.choice(self.hot) if self.rng.random() < self.repeat_share else self.fresh()

    def batch(self, low: int = 2, high: int = 8) -> list[str]:
        return [self.next() for _ in range(self.rng.randint(low, high))]
