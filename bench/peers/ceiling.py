#!/usr/bin/env python3
"""
The ceiling of the race: C{SentenceTransformer.encode} in this process,
with no server, on each workload's sentences, at several batch sizes.
``python bench/peers/ceiling.py SPEC.json`` prints one JSON object:
sentences per second for each workload and batch size (best of
C{repeat}), and the vectors of C{check} sentences, which the runner
compares with what each server returns.

Spec: C{model}, C{threads}, C{batch_sizes}, C{repeat}, C{workloads}
(name to a list of sentences), C{check} (a list of sentences).
"""

from __future__ import annotations

import json
import sys
import time


def main(spec: dict) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(spec["threads"])
    model = SentenceTransformer(spec["model"], device="cpu")
    model.encode(["warm up"] * 64, batch_size=64)
    out: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__, "workloads": {}}
    for name, texts in spec["workloads"].items():
        by_size = {}
        for size in spec["batch_sizes"]:
            best = 0.0
            for _ in range(spec["repeat"]):
                t0 = time.perf_counter()
                model.encode(texts, batch_size=size)
                best = max(best, len(texts) / (time.perf_counter() - t0))
            by_size[str(size)] = best
        top = max(by_size, key=by_size.__getitem__)
        out["workloads"][name] = {"sps": by_size[top], "batch_size": int(top), "by_batch_size": by_size}
    out["check"] = model.encode(spec["check"]).tolist()
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    print(json.dumps(main(spec)))
