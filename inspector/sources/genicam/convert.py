"""Camera pixels -> ring slot: the one copy of a frame, and where a GenTL buffer's image lies.

Needs only OpenCV and numpy (no GenTL): conversions are tested on synthetic mosaics without a camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from inspector.sources.base import SourceError

# Camera pixel formats (PFNC names) this source converts, with their bytes per pixel.
SOURCE_FORMATS: dict[str, int] = {
    "Mono8": 1,
    "RGB8": 3,
    "BGR8": 3,
    "RGBa8": 4,
    "BGRa8": 4,
    "BayerRG8": 1,
    "BayerGR8": 1,
    "BayerGB8": 1,
    "BayerBG8": 1,
}

# (camera format, ring format) -> OpenCV conversion code, or None for a plain copy. OpenCV names Bayer patterns
# after the second row (its BayerBG is GenICam's BayerRG, i.e. an R G / G B tile); tests/test_genicam.py checks
# this mapping on mosaics of a known colour.
CONVERSIONS: dict[tuple[str, str], int | None] = {
    ("Mono8", "mono8"): None,
    ("Mono8", "rgb8"): cv2.COLOR_GRAY2RGB,
    ("Mono8", "bgr8"): cv2.COLOR_GRAY2BGR,
    ("RGB8", "rgb8"): None,
    ("RGB8", "bgr8"): cv2.COLOR_RGB2BGR,
    ("RGB8", "mono8"): cv2.COLOR_RGB2GRAY,
    ("BGR8", "bgr8"): None,
    ("BGR8", "rgb8"): cv2.COLOR_BGR2RGB,
    ("BGR8", "mono8"): cv2.COLOR_BGR2GRAY,
    ("RGBa8", "rgb8"): cv2.COLOR_RGBA2RGB,
    ("RGBa8", "bgr8"): cv2.COLOR_RGBA2BGR,
    ("RGBa8", "mono8"): cv2.COLOR_RGBA2GRAY,
    ("BGRa8", "rgb8"): cv2.COLOR_BGRA2RGB,
    ("BGRa8", "bgr8"): cv2.COLOR_BGRA2BGR,
    ("BGRa8", "mono8"): cv2.COLOR_BGRA2GRAY,
    ("BayerRG8", "rgb8"): cv2.COLOR_BayerBG2RGB,
    ("BayerRG8", "bgr8"): cv2.COLOR_BayerBG2BGR,
    ("BayerRG8", "mono8"): cv2.COLOR_BayerBG2GRAY,
    ("BayerGR8", "rgb8"): cv2.COLOR_BayerGB2RGB,
    ("BayerGR8", "bgr8"): cv2.COLOR_BayerGB2BGR,
    ("BayerGR8", "mono8"): cv2.COLOR_BayerGB2GRAY,
    ("BayerGB8", "rgb8"): cv2.COLOR_BayerGR2RGB,
    ("BayerGB8", "bgr8"): cv2.COLOR_BayerGR2BGR,
    ("BayerGB8", "mono8"): cv2.COLOR_BayerGR2GRAY,
    ("BayerBG8", "rgb8"): cv2.COLOR_BayerRG2RGB,
    ("BayerBG8", "bgr8"): cv2.COLOR_BayerRG2BGR,
    ("BayerBG8", "mono8"): cv2.COLOR_BayerRG2GRAY,
}


class Converter:
    """Converts one camera format into one ring format; built once per connection (no per-frame lookups)."""

    def __init__(self, camera_format: str, ring_format: str):
        key = (camera_format, ring_format)
        if key not in CONVERSIONS:
            supported = ", ".join(sorted(SOURCE_FORMATS))
            raise SourceError(
                f"camera pixel format {camera_format} cannot be converted to the ring's {ring_format}; "
                f"supported camera formats: {supported} (set PixelFormat in source.features)"
            )
        self.camera_format = camera_format
        self.ring_format = ring_format
        self.code = CONVERSIONS[key]
        self.bytes_per_pixel = SOURCE_FORMATS[camera_format]

    def __call__(self, src: np.ndarray, out: np.ndarray) -> None:
        # A 1-channel slot is written through its (H, W) view: OpenCV treats (H, W, 1) as 1 channel too, but
        # an explicit 2-D destination guarantees it writes in place instead of allocating a new array.
        dst = out[:, :, 0] if out.shape[2] == 1 else out
        if self.code is None:
            np.copyto(dst, src if src.ndim == dst.ndim else src.reshape(dst.shape))
        else:
            cv2.cvtColor(src, self.code, dst=dst)


@dataclass
class Layout:
    """What the frames of one connection look like, read from the first buffer and checked on every one."""

    width: int
    height: int
    pixel_format: int  # PFNC value as the buffer reports it
    format_name: str
    padding_x: int
    offset: int

    @property
    def bytes_per_pixel(self) -> int:
        return SOURCE_FORMATS[self.format_name]

    def view(self, raw: bytes | bytearray | memoryview) -> np.ndarray:
        """A view of the image inside a GenTL buffer (no copy), honouring line padding and the image offset."""
        bpp = self.bytes_per_pixel
        stride = self.width * bpp + self.padding_x
        flat = np.frombuffer(raw, np.uint8, count=stride * self.height, offset=self.offset)
        rows = flat.reshape(self.height, stride)[:, : self.width * bpp]
        return rows if bpp == 1 else rows.reshape(self.height, self.width, bpp)
