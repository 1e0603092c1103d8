"""
The diffusion model: loading it, and painting one image at a time on its
device, in a thread of its own, stopping between two denoising steps when
the request is cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from PIL import Image

from hfendpoint import InvalidRequest, WorkerError

from ._diffusers_images import ImageRequest, fit, png_bytes, working_size

log = logging.getLogger("hfendpoint.workers.diffusers")

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"


class Interrupted(Exception):
    """
    Raised between two denoising steps to stop a cancelled image.
    """


@dataclass(frozen=True)
class Settings:
    """
    How every image is painted, from the command line.

    @ivar steps: denoising steps; C{None} for the pipeline's default.
    @ivar guidance_scale: C{None} for the pipeline's default.
    @ivar strength: how much an edit without a mask may change the image,
        from 0 (not at all) to 1 (entirely).
    @ivar seed: the seed of the first image of each request (the next ones
        take the following numbers), or C{None} for fresh noise each time.
    """

    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    negative_prompt: Optional[str] = None
    strength: float = 0.8
    seed: Optional[int] = None


class NoEmptyCastWarning(logging.Filter):
    """
    Drops diffusers' warning about casting a model that has no module to
    keep in float32 ("... should be kept in float32: []"): diffusers gives
    it whenever a model is cast, so SDXL's pipelines, which cast their VAE
    for every image, would log it for every image.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("should be kept in float32: []" in message)


def quieten_diffusers() -> None:
    """
    No progress bars (the gateway logs stderr line by line), and no
    spurious warning for every image.
    """
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("diffusers.models.modeling_utils").addFilter(NoEmptyCastWarning())


class Pipelines:
    """
    One model's pipelines, sharing their weights: text-to-image, loaded by
    name or path, and the image-to-image and inpainting ones derived from
    it (C{None} when the model has none).

    @ivar multiple: what the painted width and height must be multiples of.
    """

    def __init__(self, text2image: Any, device: str, dtype: Any, cpu_offload: bool = False) -> None:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        self.device = device
        self.cpu_offload = cpu_offload
        self.text2image = text2image
        self.image2image = derive(AutoPipelineForImage2Image, text2image, dtype)
        self.inpainting = derive(AutoPipelineForInpainting, text2image, dtype)
        self._offloading: Any = None
        for pipeline in self.all():
            pipeline.set_progress_bar_config(disable=True)
        # The latents are smaller than the picture by the VAE's scale
        # factor; transformer models cut them in 2x2 patches on top.
        multiple = int(getattr(text2image, "vae_scale_factor", 8) or 8)
        if getattr(text2image, "transformer", None) is not None:
            multiple *= 2
        self.multiple = multiple
        if "callback_on_step_end" not in call_parameters(text2image):
            log.warning(
                "%s takes no step callback: a cancelled image runs to its end",
                type(text2image).__name__,
            )

    def all(self) -> list[Any]:
        return [p for p in (self.text2image, self.image2image, self.inpainting) if p is not None]

    def prepare(self, pipeline: Any) -> None:
        """
        With CPU offload, hand the accelerator to C{pipeline}'s models:
        offload hooks belong to one pipeline, and the three share modules.
        """
        if self.cpu_offload and self._offloading is not pipeline:
            pipeline.enable_model_cpu_offload(device=self.device)
            self._offloading = pipeline

    def release(self, pipeline: Any) -> None:
        """
        After an image that did not finish, give back what the pipeline
        would have freed had it finished: offloaded models leave the
        accelerator, and its cache goes.
        """
        free = getattr(pipeline, "maybe_free_model_hooks", None)
        if free is not None:
            free()
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


def derive(auto_class: Any, pipeline: Any, dtype: Any) -> Any:
    """
    The pipeline of C{auto_class}'s task sharing C{pipeline}'s modules, or
    C{None} if the model family has none. The dtype must be given: without
    it, diffusers casts the shared modules to float32.
    """
    try:
        return auto_class.from_pipe(pipeline, dtype=dtype)
    except (ValueError, KeyError, TypeError) as error:
        log.info("No %s for %s: %s", auto_class.__name__, type(pipeline).__name__, error)
        return None


def load(
    model: str,
    device: str,
    dtype: Any,
    variant: Optional[str] = None,
    revision: Optional[str] = None,
    cpu_offload: bool = False,
) -> Pipelines:
    """
    Load C{model}, a hub name or a folder saved by C{save_pretrained},
    onto C{device}.
    """
    from diffusers import AutoPipelineForText2Image

    quieten_diffusers()
    options: dict[str, Any] = {"dtype": dtype}
    if variant:
        options["variant"] = variant
    if revision:
        options["revision"] = revision
    text2image = AutoPipelineForText2Image.from_pretrained(model, **options)
    if not cpu_offload:
        text2image.to(device)
    return Pipelines(text2image, device, dtype, cpu_offload)


def call_parameters(pipeline: Any) -> set[str]:
    return set(inspect.signature(pipeline.__call__).parameters)


def at_least_one_step(pipeline: Any, steps: int, strength: Optional[float]) -> int:
    """
    An edit denoises only the last C{int(steps * strength)} steps of its
    schedule, and diffusers refuses none at all: lengthen the schedule
    until one step runs. C{strength} C{None} is the pipeline's default.
    """
    if strength is None:
        parameter = inspect.signature(pipeline.__call__).parameters.get("strength")
        if parameter is None or not isinstance(parameter.default, (int, float)):
            return steps
        strength = float(parameter.default)
    if strength <= 0:
        return steps
    while int(steps * strength) < 1:
        steps += 1
    return steps


class Painter:
    """
    Paints images one at a time, on one thread that owns the device.

    @ivar on_step: if set, called on the painting thread after every
        denoising step, before the cancel check, with the step's index and
        the event that cancels the image (for progress reports and tests).
    """

    def __init__(self, pipelines: Pipelines, settings: Settings) -> None:
        self.pipelines = pipelines
        self.settings = settings
        self.on_step: Optional[Callable[[int, threading.Event], None]] = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="diffusers"
        )

    async def paint(self, request: ImageRequest, index: int) -> bytes:
        """
        The C{index}-th image of C{request}, as PNG bytes.

        Images wait for the device in turn; a cancelled one leaves the
        queue if it had not started, or stops at the end of its current
        denoising step.
        """
        stop = threading.Event()
        future = self._executor.submit(self.paint_now, request, index, stop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            stop.set()
            future.cancel()
            raise

    def paint_now(self, request: ImageRequest, index: int, stop: threading.Event) -> bytes:
        """
        Paint on this thread; L{Interrupted} if C{stop} is set meanwhile.
        """
        if stop.is_set():
            raise Interrupted()
        pipeline, arguments = self.arguments(request, index)
        parameters = call_parameters(pipeline)
        if "callback_on_step_end" in parameters:
            arguments["callback_on_step_end"] = self.step_callback(stop)
        arguments = {k: v for k, v in arguments.items() if k in parameters}
        self.pipelines.prepare(pipeline)
        try:
            output = pipeline(**arguments)
        except Interrupted:
            log.info("Image %d of %d stopped: the request was cancelled", index + 1, request.n)
            self.pipelines.release(pipeline)
            raise
        except Exception:
            # Out of memory, say: what the image held goes before the next.
            self.pipelines.release(pipeline)
            raise
        image = output.images[0]
        if not isinstance(image, Image.Image):
            raise WorkerError(f"the pipeline made no image but {type(image).__name__}")
        return png_bytes(fit(image.convert("RGB"), request.width, request.height))

    def step_callback(self, stop: threading.Event) -> Callable[..., Any]:
        def callback(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if self.on_step is not None:
                self.on_step(step, stop)
            if stop.is_set():
                raise Interrupted()
            return tensors

        return callback

    def arguments(self, request: ImageRequest, index: int) -> tuple[Any, dict[str, Any]]:
        """
        The pipeline for C{request} and what to call it with; arguments the
        pipeline does not take are dropped by the caller.
        """
        import torch

        settings = self.settings
        width, height = working_size(request.width, request.height, self.pipelines.multiple)
        arguments: dict[str, Any] = {
            "prompt": request.prompt,
            "width": width,
            "height": height,
            "num_images_per_prompt": 1,
            "output_type": "pil",
        }
        if settings.steps is not None:
            arguments["num_inference_steps"] = settings.steps
        if settings.guidance_scale is not None:
            arguments["guidance_scale"] = settings.guidance_scale
        if settings.negative_prompt is not None:
            arguments["negative_prompt"] = settings.negative_prompt
        if settings.seed is not None:
            arguments["generator"] = torch.Generator("cpu").manual_seed(settings.seed + index)
        if request.image is None:
            return self.pipelines.text2image, arguments
        arguments["image"] = fit(request.image, width, height)
        if request.mask is not None:
            if self.pipelines.inpainting is None:
                raise InvalidRequest("this model cannot inpaint: send the edit without a mask")
            pipeline = self.pipelines.inpainting
            arguments["mask_image"] = fit(request.mask, width, height, Image.Resampling.BILINEAR)
        else:
            if self.pipelines.image2image is None:
                raise InvalidRequest("this model cannot edit images without a mask")
            pipeline = self.pipelines.image2image
            arguments["strength"] = settings.strength
        if settings.steps is not None:
            arguments["num_inference_steps"] = at_least_one_step(
                pipeline, settings.steps, arguments.get("strength")
            )
        return pipeline, arguments

    def can_edit(self) -> bool:
        return self.pipelines.image2image is not None or self.pipelines.inpainting is not None

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
