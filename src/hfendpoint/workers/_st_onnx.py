"""
The model's transformer run by ONNX Runtime, on the CPU.

On a CPU, ONNX Runtime runs a small transformer faster than torch's eager
mode: it fuses attention and the feed-forward layers and skips Python
between operators, which matters most for the small batches a server
sees (a call of one sentence runs in well under half the time). Only the
first module, the transformer itself, is exported (with torch's own
exporter, at start, into a temporary directory); the model's other
modules (its pooling, its normalisation) still run as they are, on the
transformer's token embeddings. Before it serves, the exported module is
checked against torch on a few texts; a model that does not export, or
does not give the same vectors, is served by torch instead.

Text-embeddings-inference runs models on ONNX Runtime on CPUs for the
same reason; Infinity offers it as one of its engines.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

log = logging.getLogger("hfendpoint.workers.sentence_transformers")

#: The features the exported transformer takes, in this order.
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Batches to compare both backends on: texts of different lengths (so
#: padded), and one alone of another length, so that no size the export
#: saw is taken for the only one.
CHECK_BATCHES = (
    (
        "hello",
        "A quick check that both backends agree on this sentence.",
        "Padding, truncation and special tokens: all the same for both, or the check says so.",
    ),
    ("One text alone, longer than the first batch's shortest and shorter than its longest.",),
)
#: The largest difference, between the vectors of both backends, taken as
#: the same result: float32 rounding of a different order of operations.
TOLERANCE = 1e-4


class NotExportable(Exception):
    """
    The model cannot be served by ONNX Runtime: why, in words.
    """


def available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class _Transformer(torch.nn.Module):
    """
    The first module's Hugging Face model with plain tensors in and its
    last hidden state out, as the exporter wants it.
    """

    def __init__(self, model: Any, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors)), return_dict=False)[0]


def hugging_face_model(module: Any) -> Any:
    """
    The transformers model inside a sentence-transformers C{Transformer}
    module (C{auto_model}, or C{model} in newer versions).
    """
    for name in ("auto_model", "model"):
        inner = getattr(module, name, None)
        if isinstance(inner, torch.nn.Module):
            return inner
    raise NotExportable(f"its first module ({type(module).__name__}) holds no transformers model")


class OnnxForward:
    """
    Runs a sentence-transformers model as C{model(features)} does, its
    first module by ONNX Runtime.

    @param probe: features of the model's own preprocessing, to export with.
    """

    def __init__(self, model: Any, probe: dict[str, Any], threads: int) -> None:
        import onnxruntime

        self._modules = list(model)
        first = self._modules[0]
        self._output = getattr(first, "module_output_name", "token_embeddings")
        self.names = [name for name in INPUTS if isinstance(probe.get(name), torch.Tensor)]
        if "input_ids" not in self.names:
            raise NotExportable("its features have no input_ids")
        wrapped = _Transformer(hugging_face_model(first), self.names).eval()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        with tempfile.TemporaryDirectory(prefix="hfendpoint-onnx-") as directory:
            path = os.path.join(directory, "model.onnx")
            _export(wrapped, [probe[name] for name in self.names], self.names, path)
            # The session holds the model in memory: the file can go.
            try:
                self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            except Exception as error:  # onnxruntime's own exceptions have no common base
                raise NotExportable(f"ONNX Runtime could not load it ({type(error).__name__}: {error})") from error

    def __call__(self, features: dict[str, Any]) -> dict[str, Any]:
        inputs = {name: features[name].numpy() for name in self.names}
        (hidden,) = self._session.run(None, inputs)
        features[self._output] = torch.from_numpy(hidden)
        for module in self._modules[1:]:
            features = module(features)
        return features


def _export(module: torch.nn.Module, tensors: list[torch.Tensor], names: list[str], path: str) -> None:
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["hidden"] = {0: "batch", 1: "sequence"}
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The exporter's notes on how it wrote some operators; the
            # vectors are checked after.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(tensors),
                path,
                input_names=list(names),
                output_names=["hidden"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
    except Exception as error:  # the exporter raises many kinds
        raise NotExportable(f"torch could not export it ({type(error).__name__}: {error})") from error


def onnx_forward(
    model: Any, preprocess: Callable[[Sequence[str]], dict[str, Any]], threads: int
) -> OnnxForward:
    """
    The model's forward by ONNX Runtime, checked against torch's on
    L{CHECK_TEXTS}.

    @param preprocess: the features the worker makes for some texts.
    @raise NotExportable: if it cannot be exported or does not agree.
    """
    forward = OnnxForward(model, preprocess(CHECK_BATCHES[0]), threads)
    difference = max(_difference(model, forward, preprocess(texts)) for texts in CHECK_BATCHES)
    if not difference <= TOLERANCE:
        raise NotExportable(f"its vectors by ONNX Runtime differ from torch's by {difference:.2g}")
    log.info("The transformer runs on ONNX Runtime (vectors within %.1g of torch's)", difference)
    return forward


def _difference(model: Any, forward: OnnxForward, features: dict[str, Any]) -> float:
    try:
        with torch.inference_mode():
            expected = model(dict(features))["sentence_embedding"].float().numpy()
            got = forward(dict(features))["sentence_embedding"].float().numpy()
    except Exception as error:  # a model whose later modules want more than the export gives
        raise NotExportable(f"it does not run on ONNX Runtime ({type(error).__name__}: {error})") from error
    return float(np.abs(expected - got).max()) if expected.shape == got.shape else float("inf")


def choose_forward(backend: str, device: Any, dtype: Any, model: Any, preprocess: Callable, threads: int) -> Optional[OnnxForward]:
    """
    The ONNX forward to serve with, or C{None} for torch's: with
    C{backend} C{auto}, ONNX Runtime when it is installed and the model
    runs in float32 on the CPU, falling back to torch if the model does
    not export; with C{onnx}, ONNX Runtime or an error.

    @raise SystemExit: when C{onnx} was asked for and cannot be had.
    """
    if backend == "torch":
        return None
    reason = None
    if str(device) != "cpu":
        reason = f"ONNX Runtime is used on the CPU only, not {device}"
    elif dtype != torch.float32:
        reason = f"ONNX Runtime is used for float32 weights only, not {dtype}"
    elif not available():
        reason = "onnxruntime is not installed (pip install onnxruntime onnx)"
    if reason is None:
        try:
            return onnx_forward(model, preprocess, threads)
        except NotExportable as error:
            reason = str(error)
    if backend == "onnx":
        raise SystemExit(f"cannot serve on ONNX Runtime: {reason}")
    log.info("The transformer runs on torch: %s", reason)
    return None
