"""
Tests for L{hfendpoint.wire}, the protocol's names shared by the gateway
and the worker library.
"""

from __future__ import annotations

import ast

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

import hfendpoint
from hfendpoint import wire


class WireTests(SynchronousTestCase):
    def test_imports_nothing(self) -> None:
        """
        Both sides import it, the worker side without Twisted, so it
        imports nothing at all.
        """
        tree = ast.parse(FilePath(wire.__file__).getContent())
        imports = [
            node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
        ]
        self.assertEqual(imports, [])

    def test_original_names(self) -> None:
        """
        The names of the original protocol are spelt as the original spells
        them: workers written for it match on these very strings.
        """
        self.assertEqual(wire.FD_ENV, "HFENDPOINT_FD")
        self.assertEqual(
            [
                wire.CHAT_COMPLETIONS,
                wire.TOKENIZE,
                wire.EMBEDDINGS,
                wire.IMAGES_GENERATIONS,
                wire.IMAGES_EDITIONS,
            ],
            ["chat_completions", "tokenize", "embeddings", "images_generations", "images_editions"],
        )

    def test_extensions(self) -> None:
        """
        Our own messages are in the reserved family, which no worker's
        handler may take.
        """
        self.assertEqual(wire.DESCRIBE, "hfendpoint.describe")
        self.assertEqual(wire.CANCEL, "hfendpoint.cancel")
        for name in (wire.DESCRIBE, wire.CANCEL):
            self.assertTrue(name.startswith(wire.RESERVED_PREFIX))
            self.assertRaises(ValueError, hfendpoint.handler, name)
        self.assertFalse(wire.DETOKENIZE.startswith(wire.RESERVED_PREFIX))
