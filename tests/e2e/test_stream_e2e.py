"""WS /v1/emotions/stream through a real uvicorn, a real embedded Triton and Redis (learner histories)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gateway.learning.policy import load_policy
from tests.support.gateway import recv, serve, ws
from tests.support.stack import TEXTS, as_triton_row, grpc_infer, labels_of

pytestmark = pytest.mark.e2e


def test_stream_answers_what_triton_answers_with_the_learner_trajectory(triton, redis_settings):
    with serve(redis_settings) as served, ws(served) as conn:
        for i, text in enumerate(TEXTS):
            conn.send(json.dumps({"id": i, "text": text, "learner_id": "stream-e2e"}))
        frames = []
        while len([f for f in frames if f["type"] == "result"]) < len(TEXTS):
            frames.append(recv(conn))
    results = [f for f in frames if f["type"] == "result"]
    assert [f["id"] for f in results] == list(range(len(TEXTS)))
    direct = grpc_infer(triton, TEXTS)
    probs = direct.as_numpy("PROBABILITIES")
    for i, frame in enumerate(results):
        served_probs, served_labels = as_triton_row(frame["result"])
        np.testing.assert_allclose(served_probs, probs[i], atol=1e-6)
        assert served_labels == labels_of(direct)[i]
    window = load_policy().trajectory.window
    # Redis kept every point (the trend looks at the last `window` of them)
    assert [f["trend"]["points"] for f in results] == [min(n, window) for n in range(1, len(TEXTS) + 1)]
    trajectory = [f for f in frames if f["type"] == "trajectory"]
    assert trajectory[0]["previous"] is None and trajectory[0]["id"] == 0
