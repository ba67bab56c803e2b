"""Model and tensor names shared by export, the Triton model repository, the gateway and clients."""

from __future__ import annotations

# The ensemble clients call, and its composing models.
ENSEMBLE = "goemotions"
TOKENIZER = "tokenizer"
CLASSIFIER = "classifier"
POSTPROCESS = "postprocess"

# Tensors.
TEXT = "TEXT"
LOGITS = "logits"
PROBABILITIES = "PROBABILITIES"
LABELS = "LABELS"
# The version of the model that produced a row (the manifest's served version): one string per row.
MODEL_VERSION = "MODEL_VERSION"
ENSEMBLE_OUTPUTS = (PROBABILITIES, LABELS, MODEL_VERSION)

# One truncation length for training, export, parity and serving (spec.json carries it to Triton).
DEFAULT_MAX_LENGTH = 128

# GoEmotions (Demszky et al., 2020), in the dataset's label-id order: the model's output order.
GOEMOTIONS_LABELS = (
    "admiration",
    "amusement",
    "anger",
    "annoyance",
    "approval",
    "caring",
    "confusion",
    "curiosity",
    "desire",
    "disappointment",
    "disapproval",
    "disgust",
    "embarrassment",
    "excitement",
    "fear",
    "gratitude",
    "grief",
    "joy",
    "love",
    "nervousness",
    "optimism",
    "pride",
    "realization",
    "relief",
    "remorse",
    "sadness",
    "surprise",
    "neutral",
)
NEUTRAL = "neutral"

# Learning signals GoEmotions has no label for, learned from the learner-message set (data/learner). A model
# that has them (the offline student) outputs them after the 28 GoEmotions labels, in this order; a hub
# GoEmotions checkpoint has none. Either way the first 28 columns are GOEMOTIONS_LABELS.
LEARNING_SIGNALS = ("giving_up", "boredom", "stuck")
WITH_LEARNING_SIGNALS = GOEMOTIONS_LABELS + LEARNING_SIGNALS
OUTPUT_LABELS = (GOEMOTIONS_LABELS, WITH_LEARNING_SIGNALS)


def output_labels(width: int) -> tuple[str, ...]:
    """The label of each column of a model output ``width`` columns wide (28, or 28 + the signals)."""
    for labels in OUTPUT_LABELS:
        if len(labels) == width:
            return labels
    raise ValueError(
        f"a model output has {' or '.join(str(len(x)) for x in OUTPUT_LABELS)} columns, not {width}"
    )
