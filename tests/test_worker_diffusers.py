"""
Tests for the diffusers image worker, L{hfendpoint.workers.diffusers}, on a
tiny Stable Diffusion XL pipeline with random weights built for each test
(a few hundred kilobytes: nothing is downloaded).

The gateway tests serve it from a folder through a real gateway and the
official client; the others drive the worker in this process, through the
worker library and a socket, where a hook on the denoising steps lets a
test cancel an image at a known step.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import sys
import tempfile
import threading
import urllib.request
from typing import Any

import msgpack
from twisted.trial.unittest import SynchronousTestCase, TestCase

from .gateway import in_thread, openai_client, png_size, start_gateway, tiny_png


TIMEOUT = 60.0
PROMPT = "a red cat"


def tiny_sdxl() -> Any:
    """
    A Stable Diffusion XL pipeline of the real classes (two CLIP text
    encoders, the second with a projection, a UNet with SDXL's added time
    embedding, a VAE with the usual 8x scale) at a tiny width, with random
    weights and a CLIP tokenizer over the 26 letters.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for letter in letters:
            vocabulary[letter + suffix] = len(vocabulary)
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "vocab.json"), "w") as f:
            json.dump(vocabulary, f)
        with open(os.path.join(folder, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n")
        tokenizer = CLIPTokenizer(
            os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=16
        )
    text = CLIPTextConfig(
        vocab_size=len(vocabulary), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, projection_dim=16, hidden_act="gelu",
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=4,
        cross_attention_dim=32, transformer_layers_per_block=(1, 1),
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 16,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4, sample_size=64,
        block_out_channels=[8, 8, 8, 8], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="leading", steps_offset=1,
    )
    return StableDiffusionXLPipeline(
        vae=vae, unet=unet, scheduler=scheduler,
        text_encoder=CLIPTextModel(text), text_encoder_2=CLIPTextModelWithProjection(text),
        tokenizer=tokenizer, tokenizer_2=tokenizer,
    )


def saved_tiny_sdxl(testcase: SynchronousTestCase) -> str:
    """
    The tiny pipeline saved in a folder, as a model on the hub would be.
    """
    folder = os.path.abspath(testcase.mktemp())
    tiny_sdxl().save_pretrained(folder)
    return folder


def rgba_png(width: int, height: int, transparent_columns: int) -> bytes:
    """
    An OpenAI mask: its first C{transparent_columns} columns transparent
    (to edit), the rest opaque white (to keep).
    """
    from PIL import Image

    mask = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    mask.paste((0, 0, 0, 0), (0, 0, transparent_columns, height))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def worker_command(folder: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "hfendpoint.workers.diffusers", "--model", folder, "--steps", "2", *options]


class GatewayTests(TestCase):
    """
    The worker as the gateway runs it, through the official client.
    """

    async def serve(self, *options: str) -> Any:
        """
        Start a gateway serving the tiny model and wait until the worker
        answers the handshake, which it does once the model is loaded (so
        no grace period: a loaded machine may take long to import torch).
        """
        folder = saved_tiny_sdxl(self)
        url, gateway = await start_gateway(
            self,
            worker_command(folder, *options),
            worker_env={"HF_HUB_OFFLINE": "1"},
            startup_grace=10 * TIMEOUT,
        )
        info = gateway.client.info
        self.assertEqual((sorted(info.calls), info.model), (["images_editions", "images_generations"], folder))
        return url, openai_client(self, url)

    async def test_generations(self) -> None:
        """
        C{n} PNGs of the size asked for, as base64 or by URL, even when the
        size is no multiple of 8; a size over C{--max-side} is refused.
        """
        url, client = await self.serve("--max-side", "256")
        result = await in_thread(
            client.images.generate, prompt=PROMPT, n=2, size="64x48", response_format="b64_json"
        )
        self.assertEqual(
            [png_size(base64.b64decode(image.b64_json)) for image in result.data], [(64, 48)] * 2
        )

        result = await in_thread(
            client.images.generate, prompt=PROMPT, size="36x20", response_format="url"
        )
        [image] = result.data
        self.assertTrue(image.url.startswith(url + "/v1/images/"), image.url)

        def fetch(address: str) -> bytes:
            with urllib.request.urlopen(address, timeout=TIMEOUT) as response:
                return response.read()

        self.assertEqual(png_size(await in_thread(fetch, image.url)), (36, 20))

        import openai

        with self.assertRaises(openai.BadRequestError) as caught:
            await in_thread(client.images.generate, prompt=PROMPT, size="512x64")
        self.assertIn("must be integers from 1 to 256", str(caught.exception))

    async def test_edits(self) -> None:
        """
        An edit with a mask (inpainting) and one without (image to image)
        give PNGs of the size asked for; an image that does not decode, or
        a mask without transparency, is refused with a clear message.
        """
        _, client = await self.serve()
        image = ("image.png", tiny_png(40, 40), "image/png")
        result = await in_thread(
            client.images.edit, image=image, mask=("mask.png", rgba_png(40, 40, 20), "image/png"),
            prompt=PROMPT, n=2, size="64x64", response_format="b64_json",
        )
        self.assertEqual(
            [png_size(base64.b64decode(edit.b64_json)) for edit in result.data], [(64, 64)] * 2
        )
        result = await in_thread(
            client.images.edit, image=image, prompt=PROMPT, size="48x32", response_format="b64_json"
        )
        self.assertEqual([png_size(base64.b64decode(edit.b64_json)) for edit in result.data], [(48, 32)])

        import openai

        broken = tiny_png(8, 8)[:40]
        with self.assertRaises(openai.BadRequestError) as caught:
            await in_thread(client.images.edit, image=("b.png", broken, "image/png"), prompt=PROMPT)
        self.assertIn("image could not be decoded", str(caught.exception))
        with self.assertRaises(openai.BadRequestError) as caught:
            await in_thread(
                client.images.edit, image=image, mask=("m.png", tiny_png(40, 40), "image/png"), prompt=PROMPT
            )
        self.assertIn("mask must have an alpha channel", str(caught.exception))


class InProcessTests(SynchronousTestCase):
    """
    The worker in this process, on the tiny pipeline, with no file.
    """

    def painter(self, steps: int) -> Any:
        import torch

        from hfendpoint.workers._diffusers_engine import Painter, Pipelines, Settings

        pipelines = Pipelines(tiny_sdxl(), "cpu", torch.float32)
        painter = Painter(pipelines, Settings(steps=steps, seed=0))
        self.addCleanup(painter.close)
        return painter

    def test_cancel_stops_at_the_next_step(self) -> None:
        """
        A cancel sent while an image is being painted stops it at the end
        of the denoising step under way: no reply is sent for it, and the
        device is free for the next request, which is painted whole.
        """
        from hfendpoint.library import modern_calls, serve
        from hfendpoint.workers.diffusers import DiffusersWorker

        painter = self.painter(steps=4)
        steps: list[int] = []
        blocked = threading.Event()

        def on_step(step: int, stop: threading.Event) -> None:
            steps.append(step)
            if not blocked.is_set():
                # Hold the first image after its first step until it is
                # cancelled: the cancel arrives at a known step.
                blocked.set()
                stop.wait(TIMEOUT)

        painter.on_step = on_step
        calls = modern_calls({"images_generations": DiffusersWorker(painter).images_generations})
        request = {"prompt": PROMPT, "n": 1, "width": 64, "height": 64}

        async def scenario() -> list[Any]:
            ours, theirs = socket.socketpair()
            server = asyncio.create_task(serve(theirs, calls))
            reader, writer = await asyncio.open_unix_connection(sock=ours)
            unpacker = msgpack.Unpacker(raw=False)

            async def receive() -> Any:
                while True:
                    for message in unpacker:
                        return message
                    data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
                    self.assertTrue(data, "the worker closed the socket")
                    unpacker.feed(data)

            def send(message: dict[str, Any]) -> None:
                writer.write(msgpack.packb(message, use_bin_type=True))

            send({"id": 1, "name": "images_generations", "data": request})
            self.assertTrue(await asyncio.to_thread(blocked.wait, TIMEOUT))
            send({"id": 2, "name": "hfendpoint.cancel", "data": {"id": 1}})
            send({"id": 3, "name": "images_generations", "data": request})
            reply = await receive()
            writer.close()
            await asyncio.wait_for(server, TIMEOUT)
            return reply

        reply = asyncio.run(scenario())
        self.assertEqual(reply["id"], 3)
        self.assertEqual(png_size(reply["data"]["png"]), (64, 64))
        self.assertEqual(steps, [0] + list(range(4)))

    def test_edit_pipelines(self) -> None:
        """
        An edit with a mask goes to the inpainting pipeline with the mask
        turned into diffusers' convention (white where the OpenAI mask is
        transparent), one without to image to image; both share the
        weights of the text-to-image pipeline.
        """
        from hfendpoint.workers._diffusers_images import parse_request

        painter = self.painter(steps=2)
        pipelines = painter.pipelines
        self.assertIs(pipelines.inpainting.unet, pipelines.text2image.unet)
        self.assertIs(pipelines.image2image.vae, pipelines.text2image.vae)
        data = {"prompt": PROMPT, "n": 1, "width": 60, "height": 30, "image": tiny_png(20, 10)}

        pipeline, arguments = painter.arguments(parse_request(dict(data, mask=rgba_png(20, 10, 5)), 256, True), 0)
        self.assertIs(pipeline, pipelines.inpainting)
        self.assertEqual((arguments["width"], arguments["height"]), (64, 32))
        self.assertEqual(arguments["image"].size, (64, 32))
        mask = arguments["mask_image"]
        self.assertEqual((mask.mode, mask.size), ("L", (64, 32)))
        self.assertEqual((mask.getpixel((0, 16)), mask.getpixel((63, 16))), (255, 0))

        pipeline, arguments = painter.arguments(parse_request(data, 256, True), 0)
        self.assertIs(pipeline, pipelines.image2image)
        self.assertNotIn("mask_image", arguments)
        # 2 steps at strength 0.8 would denoise int(1.6) = 1 step: enough.
        self.assertEqual((arguments["strength"], arguments["num_inference_steps"]), (0.8, 2))

        pipeline, arguments = painter.arguments(parse_request(dict(data, image=None), 256, False), 0)
        self.assertIs(pipeline, pipelines.text2image)
        self.assertNotIn("image", arguments)
