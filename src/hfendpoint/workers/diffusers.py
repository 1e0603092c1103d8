"""
A worker serving an image model with diffusers: C{images_generations}
(text to image) and C{images_editions} (inpainting with a mask, image to
image without), Stable Diffusion XL by default::

    hfendpoint python -m hfendpoint.workers.diffusers \\
        --model stabilityai/stable-diffusion-xl-base-1.0

The model is loaded with C{AutoPipelineForText2Image}, so any diffusers
text-to-image pipeline works, from the hub or from a folder; the editing
pipelines are derived from it and share its weights. It is loaded before
the worker answers the gateway's handshake, so that ready means ready.

Images are painted one at a time, on a thread that owns the device; the
event loop stays free to read cancels, and a cancelled image stops at the
end of its current denoising step.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any, Optional, Sequence

import hfendpoint

from ._diffusers_engine import DEFAULT_MODEL, Painter, Settings
from ._diffusers_images import parse_request

__all__ = ["DiffusersWorker", "main", "parse_arguments"]

log = logging.getLogger("hfendpoint.workers.diffusers")

DEFAULT_MAX_SIDE = 2048


class DiffusersWorker:
    """
    The two image calls, on a L{Painter}.

    @ivar max_side: the largest width or height a request may ask for.
    """

    def __init__(self, painter: Painter, max_side: int = DEFAULT_MAX_SIDE) -> None:
        self.painter = painter
        self.max_side = max_side

    async def images_generations(self, data: Any) -> AsyncIterator[dict[str, Any]]:
        """
        C{n} images of C{prompt}, each sent as soon as it is painted.
        """
        request = parse_request(data, self.max_side, edit=False)
        for index in range(request.n):
            yield {"png": await self.painter.paint(request, index)}

    async def images_editions(self, data: Any) -> AsyncIterator[dict[str, Any]]:
        """
        C{n} edits of C{image}: where C{mask} is transparent if there is a
        mask (inpainting), the whole image otherwise (image to image).
        """
        # Decoding a large PNG takes a while: not on the event loop.
        request = await asyncio.to_thread(parse_request, data, self.max_side, True)
        for index in range(request.n):
            yield {"png": await self.painter.paint(request, index)}

    def register(self) -> None:
        """
        Register the calls for C{hfendpoint.run}; edits only if the model
        has a pipeline for them, so that the gateway answers the others
        itself.
        """
        hfendpoint.handler("images_generations")(self.images_generations)
        if self.painter.can_edit():
            hfendpoint.handler("images_editions")(self.images_editions)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def strength(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1, not {value}")
    return value


def parse_arguments(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hfendpoint.workers.diffusers",
        description="An hfendpoint worker serving an image model with diffusers.",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a model on the Hugging Face hub, or a folder saved by save_pretrained (default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--revision", help="the hub revision (branch, tag or commit) to load")
    parser.add_argument(
        "--device",
        help="cpu, cuda, cuda:1, mps... (default: a GPU if there is one, chosen by worker index, else the CPU)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="the weights' precision (default: float16 on CUDA, float32 elsewhere)",
    )
    parser.add_argument(
        "--variant",
        help="the weights' variant to download, such as fp16 (default: the main weights)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        help="denoising steps per image (default: the pipeline's, 50 for SDXL)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        help="classifier-free guidance scale (default: the pipeline's)",
    )
    parser.add_argument("--negative-prompt", help="what every image should not show")
    parser.add_argument(
        "--strength",
        type=strength,
        default=0.8,
        help="how much an edit without a mask changes the image, 0 to 1 (default: 0.8)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="seed of the first image of each request, the next ones following (default: random)",
    )
    parser.add_argument(
        "--max-side",
        type=positive_int,
        default=DEFAULT_MAX_SIDE,
        help=f"the largest width or height a request may ask for (default: {DEFAULT_MAX_SIDE})",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads for torch (default: the CPUs shared between the gateway's workers)",
    )
    parser.add_argument(
        "--cpu-offload",
        action="store_true",
        help="keep models in memory and move each to the GPU only while it runs (needs accelerate)",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    arguments = parse_arguments(argv)
    logging.basicConfig(format="%(name)s %(levelname)s: %(message)s", level=logging.INFO)
    if os.environ.get("HFENDPOINT_FD") is None:
        # Found now rather than after minutes of loading.
        raise SystemExit(
            "this program is an hfendpoint worker; start it through the gateway: "
            "hfendpoint python -m hfendpoint.workers.diffusers [OPTIONS]"
        )

    from ._device import pick_device, set_cpu_threads, torch_dtype
    from ._diffusers_engine import load

    device = pick_device(arguments.device)
    set_cpu_threads(device, arguments.threads)
    dtype = torch_dtype(arguments.dtype, device)
    log.info("Loading %s on %s (%s)", arguments.model, device, str(dtype).removeprefix("torch."))
    try:
        pipelines = load(
            arguments.model,
            device,
            dtype,
            variant=arguments.variant,
            revision=arguments.revision,
            cpu_offload=arguments.cpu_offload,
        )
    except (OSError, ValueError) as error:
        raise SystemExit(f"could not load {arguments.model}: {error}") from None
    settings = Settings(
        steps=arguments.steps,
        guidance_scale=arguments.guidance_scale,
        negative_prompt=arguments.negative_prompt,
        strength=arguments.strength,
        seed=arguments.seed,
    )
    painter = Painter(pipelines, settings)
    DiffusersWorker(painter, arguments.max_side).register()
    log.info(
        "Serving %s (%s%s)",
        arguments.model,
        type(pipelines.text2image).__name__,
        "" if painter.can_edit() else ", no edits",
    )
    try:
        asyncio.run(hfendpoint.run(model=os.environ.get("HFENDPOINT_MODEL_NAME") or arguments.model))
    finally:
        painter.close()


if __name__ == "__main__":
    main()
