"""
Tests for the worker library's answer to the gateway's handshake, and for
what the handshake changes: the calls and model it reports, embedding
vectors as float32 bytes.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.library import modern_calls
from hfendpoint.library._run import model_name

from .gateway_end import Peer, capture_logs, echo, serve_scenario


class HandshakeTests(SynchronousTestCase):
    """
    C{hfendpoint.describe}: answered by the library for every worker.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def test_describe(self) -> None:
        async def scenario(peer: Peer) -> Any:
            await peer.send(1, "hfendpoint.describe", {"protocol": 2})
            reply = await peer.receive()
            await peer.send(2, "echo", {"after": True})
            return [reply, await peer.receive()]

        calls = modern_calls({"tokenize": echo, "echo": echo, "embeddings": echo})
        self.assertEqual(
            serve_scenario(calls, scenario, model="tiny"),
            [
                {
                    "id": 1,
                    "data": {
                        "protocol": 2,
                        "calls": ["echo", "embeddings", "tokenize"],
                        "model": "tiny",
                        "cancel": True,
                        "ping": True,
                        "features": [],
                    },
                },
                {"id": 2, "data": {"after": True}},
            ],
        )

    def test_features(self) -> None:
        """
        A worker announces its optional abilities, once each, sorted.
        """

        async def scenario(peer: Peer) -> Any:
            await peer.send(1, "hfendpoint.describe", {"protocol": 2})
            return (await peer.receive())["data"]["features"]

        calls = modern_calls({"chat_completions": echo})
        self.assertEqual(
            serve_scenario(calls, scenario, features=["chat_n", "b", "chat_n"]), ["b", "chat_n"]
        )

    def vectors_after(self, handshake: Any, reply: Any) -> Any:
        async def scenario(peer: Peer) -> Any:
            if handshake is not None:
                await peer.send(1, "hfendpoint.describe", handshake)
                await peer.receive()
            await peer.send(2, "embeddings", {"input": [[1], [2]]})
            return (await peer.receive())["data"]

        calls = modern_calls({"embeddings": lambda data: reply})
        return serve_scenario(calls, scenario)

    def test_vectors_as_float32_when_the_gateway_accepts_them(self) -> None:
        """
        Lists of floats cross the socket as little-endian float32 bytes when
        the handshake says the gateway reads them.
        """
        handshake = {"protocol": 2, "accepts": ["float32_vectors"]}
        data = self.vectors_after(handshake, {"embeddings": [[0.5, -0.25], (1.0, 2.0)], "extra": 1})
        self.assertEqual(
            data,
            {"embeddings": [struct.pack("<2f", 0.5, -0.25), struct.pack("<2f", 1.0, 2.0)], "extra": 1},
        )

    def test_vectors_as_sent_otherwise(self) -> None:
        """
        An older gateway (no handshake, or one without C{accepts}) gets the
        lists; anything that is not a list of numbers is left as it is.
        """
        reply = {"embeddings": [[0.5, -0.25]]}
        self.assertEqual(self.vectors_after(None, reply), reply)
        self.assertEqual(self.vectors_after({"protocol": 2}, reply), reply)
        accepting = {"protocol": 2, "accepts": ["float32_vectors"]}
        odd = {"embeddings": [[0.5, "x"]]}
        self.assertEqual(self.vectors_after(accepting, odd), odd)
        raw = {"embeddings": [b"\x00\x00\x00\x00"]}
        self.assertEqual(self.vectors_after(accepting, raw), raw)

    def test_model_name(self) -> None:
        """
        The keyword wins over the environment, which wins over nothing.
        """
        self.patch(os, "environ", {"HFENDPOINT_MODEL_NAME": "from-env"})
        self.assertEqual(model_name("mine"), "mine")
        self.assertEqual(model_name(None), "from-env")
        self.patch(os, "environ", {})
        self.assertIsNone(model_name(None))
