"""Peer services for the benchmarks (never served): what teams build before a serving stack.

- ``--backend torch``: FastAPI + transformers ``pipeline`` on the torch FP32 model ("naive");
- ``--backend onnx``: FastAPI + the same pipeline on an optimum ``ORTModelForSequenceClassification``
  (ONNX Runtime in-process, FP32 or INT8 file), no batching across requests ("ort-inproc").

    python -m loadtest.peer_service --backend torch --model build/models/student --port 8090
    python -m loadtest.peer_service --backend onnx --model build/exports/student --onnx-file model.int8.onnx
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


def _classifier(backend: str, model: str, onnx_file: str | None, threads: int) -> Any:
    from transformers import AutoTokenizer, pipeline

    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        return pipeline("text-classification", model=model, top_k=None, function_to_apply="sigmoid")
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForSequenceClassification

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    ort_model = ORTModelForSequenceClassification.from_pretrained(
        model, file_name=onnx_file, session_options=options
    )
    return pipeline(
        "text-classification",
        model=ort_model,
        tokenizer=AutoTokenizer.from_pretrained(model),
        top_k=None,
        function_to_apply="sigmoid",
    )


def create_app(backend: str, model: str, onnx_file: str | None = None, threads: int = 2) -> FastAPI:
    classifier = _classifier(backend, model, onnx_file, threads)
    app = FastAPI(title=f"peer service ({backend})")

    @app.post("/classify")
    def classify(body: TextIn) -> dict[str, Any]:  # sync: FastAPI runs it in its thread pool
        scores: list[dict[str, Any]] = classifier([body.text])[0]
        return {"emotions": {s["label"]: s["score"] for s in scores}}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def peer_command(backend: str, model: str, port: int, *, onnx_file: str | None = None) -> list[str]:
    """The command line that serves one peer on 127.0.0.1:``port`` (for the benchmarks' Stack)."""
    cmd = [sys.executable, "-m", "loadtest.peer_service", "--backend", backend, "--model", model]
    return [*cmd, "--port", str(port), *(["--onnx-file", onnx_file] if onnx_file else [])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.peer_service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", choices=["torch", "onnx"], required=True)
    p.add_argument(
        "--model", required=True, help="model dir (torch) or export dir with config + tokenizer (onnx)"
    )
    p.add_argument("--onnx-file", default=None, help="ONNX file inside --model (onnx backend)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    app = create_app(args.backend, args.model, args.onnx_file, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
