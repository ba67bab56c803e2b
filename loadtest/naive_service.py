"""The baseline most teams start with: FastAPI + a transformers ``pipeline`` (torch FP32), one request
at a time per call. Used only by the gateway benchmark, never served.

    python -m loadtest.naive_service --model build/models/student --port 8090
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class TextIn(BaseModel):
    text: str


def create_app(model: str, threads: int) -> FastAPI:
    import torch
    from transformers import pipeline

    torch.set_num_threads(threads)
    classifier = pipeline("text-classification", model=model, top_k=None, function_to_apply="sigmoid")
    app = FastAPI(title="naive transformers pipeline")

    @app.post("/classify")
    def classify(body: TextIn) -> dict[str, Any]:  # sync: FastAPI runs it in its thread pool
        scores: list[dict[str, Any]] = classifier([body.text])[0]  # type: ignore[assignment]
        return {"emotions": {s["label"]: s["score"] for s in scores}}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.naive_service", description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    uvicorn.run(create_app(args.model, args.threads), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
