"""Call the goemotions ensemble directly with tritonclient, over gRPC and over HTTP (power users).

    python clients/triton_client.py "I finally get it!" "This makes no sense."
    python clients/triton_client.py --protocol http --url 127.0.0.1:8000 "..."

TEXT is BYTES [rows, 1]; PROBABILITIES is FP32 [rows, 28] (a calibrated sigmoid per label, in GoEmotions
label-id order), or [rows, 31] for a model with the learning signals giving_up, boredom, stuck after the
28 (``contract.names.output_labels``); LABELS is BYTES [rows, k]: each row's labels over their tuned
thresholds, "" as padding; MODEL_VERSION is BYTES [rows, 1]: the model that produced the row (manifest
digest + variant).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from contract.names import ENSEMBLE, LABELS, MODEL_VERSION, PROBABILITIES, TEXT, output_labels


def classify(
    texts: list[str], url: str = "127.0.0.1:8001", protocol: str = "grpc"
) -> list[dict[str, object]]:
    if protocol == "grpc":
        import tritonclient.grpc as triton
    else:
        import tritonclient.http as triton
    client = triton.InferenceServerClient(url)
    text = triton.InferInput(TEXT, [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    names = (PROBABILITIES, LABELS, MODEL_VERSION)
    result = client.infer(ENSEMBLE, [text], outputs=[triton.InferRequestedOutput(n) for n in names])
    probs, labels, versions = (result.as_numpy(n) for n in names)
    names_of = output_labels(probs.shape[1])
    return [
        {
            "text": t,
            "labels": [x.decode() for x in row if x],
            "probabilities": {n: round(float(x), 4) for n, x in zip(names_of, p, strict=True)},
            "model_version": v[0].decode(),
        }
        for t, row, p, v in zip(texts, labels, probs, versions, strict=True)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--url", default=None, help="host:port (default 127.0.0.1:8001 gRPC / :8000 HTTP)")
    args = parser.parse_args()
    url = args.url or ("127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000")
    json.dump(classify(args.texts, url, args.protocol), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
