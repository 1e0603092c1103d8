"""
The in-memory store behind C{response_format=url}.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Optional

from zope.interface import implementer

from hfendpoint.interfaces import IImageStore


class ImageTooLarge(Exception):
    """
    An image larger than the whole store: kept, it would be dropped at
    once (its URL dead before the client has it), and every other image
    with it.
    """

    def __init__(self, size: int, capacity: int) -> None:
        super().__init__(f"an image of {size} bytes is larger than the store's {capacity}")
        self.size = size
        self.capacity = capacity


@implementer(IImageStore)
class MemoryImageStore:
    """
    Keeps images up to C{capacity} bytes in all, dropping the oldest first.

    Ids carry 192 random bits: a URL is the only credential for its image
    (the original's C{<request>-<index>} ids let anyone read anyone's).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._images: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._images)

    def add(self, png: bytes) -> str:
        """
        @raise ImageTooLarge: for an image larger than the capacity.
        """
        if len(png) > self.capacity:
            raise ImageTooLarge(len(png), self.capacity)
        image_id = "img-" + secrets.token_urlsafe(24)
        self._images[image_id] = png
        self.size += len(png)
        while self.size > self.capacity and self._images:
            _, dropped = self._images.popitem(last=False)
            self.size -= len(dropped)
        return image_id

    def get(self, image_id: str) -> Optional[bytes]:
        return self._images.get(image_id)

    def delete(self, image_id: str) -> bool:
        png = self._images.pop(image_id, None)
        if png is None:
            return False
        self.size -= len(png)
        return True
