"""Preprocessing: the one place where a frame becomes a network input.

Used by the daemon (into preallocated buffers), by training (dataset loading) and by export (parity checks),
so the three cannot differ. Only geometry and channel conversion happen here; normalisation (mean/std) is
folded into the exported graph (see `inspector.train.models.Normalize`), so the network input is uint8.
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np

from inspector.manifest import ModelManifest

INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}

# ImageNet statistics; also right for grayscale when replicated. Written into every manifest.
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
MEAN_GRAY = (0.449,)
STD_GRAY = (0.226,)


def convert_channels(image: np.ndarray, pixel_format: str, color: Literal["gray", "rgb"]) -> np.ndarray:
    """Bring an (H, W[, C]) uint8 image in `pixel_format` (mono8/rgb8/bgr8) to the network's color order.

    Allocates; for training and tools. The daemon uses Preprocessor, which writes into its own buffers.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if color == "gray":
        if channels == 1:
            return image
        code = cv2.COLOR_RGB2GRAY if pixel_format == "rgb8" else cv2.COLOR_BGR2GRAY
        return cv2.cvtColor(image, code)[:, :, None]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if pixel_format == "bgr8":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def resize_image(
    image: np.ndarray,
    size: tuple[int, int],
    *,
    pixel_format: str = "mono8",
    color: Literal["gray", "rgb"] = "gray",
    interpolation: str = "area",
) -> np.ndarray:
    """(H, W[, C]) uint8 -> (height, width, channels) uint8 network input. `size` is (height, width)."""
    height, width = size
    if image.ndim == 2:
        image = image[:, :, None]
    # Resize first, then convert: the order the daemon's Preprocessor uses (cheaper on large frames), so that
    # training and runtime inputs are bit-identical (rgb->gray rounds differently in the other order).
    src = image[:, :, 0] if image.shape[2] == 1 else image
    resized = cv2.resize(src, (width, height), interpolation=INTERPOLATION[interpolation])
    return convert_channels(resized, pixel_format, color)


def placed_size(frame: tuple[int, int], scale: float, input_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) a frame of size `frame` takes inside a network input of `input_size` at `scale`.

    Native-resolution models (scale 1.0) and scaled ones keep the frame's aspect ratio: the frame is resized
    by `scale` and placed at the input's top-left corner, the rest of the input is 0 (see `place_image`). A
    frame that would not fit is shrunk further, with the same factor on both axes, until it does: the aspect
    ratio never changes, and callers report the extra shrink (`placed_scale`).
    """
    fh, fw = frame
    height, width = input_size
    h, w = max(1, round(fh * scale)), max(1, round(fw * scale))
    if h > height or w > width:
        fit = min(height / fh, width / fw)
        h, w = max(1, min(height, math.floor(fh * fit))), max(1, min(width, math.floor(fw * fit)))
    return h, w


def placed_scale(frame: tuple[int, int], scale: float, input_size: tuple[int, int]) -> float:
    """The linear scale actually applied by `place_image` (< `scale` when the frame had to shrink to fit)."""
    h, w = placed_size(frame, scale, input_size)
    return min(h / frame[0], w / frame[1])


def place_image(
    image: np.ndarray,
    scale: float,
    input_size: tuple[int, int],
    *,
    pixel_format: str = "mono8",
    color: Literal["gray", "rgb"] = "gray",
    out: np.ndarray | None = None,
    pad: Literal["zero", "reflect"] = "zero",
) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W[, C]) uint8 -> ((height, width, channels) network input, (h, w) of the image inside it).

    The frame is resized by `scale` (INTER_AREA down, INTER_LINEAR up, untouched at 1.0: one resize at most),
    converted to the network's channels and written to the top-left corner of the input. The rest of the input
    (right of and below the frame) is `pad`: 0, or the frame mirrored at its edges (cv2.BORDER_REFLECT_101),
    which gives the network no artificial step edge where the frame ends. Used by training, evaluation and the
    daemon, which passes `out` (a preallocated input row) to write in place.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    height, width = input_size
    channels = 1 if color == "gray" else 3
    if out is None:
        out = np.zeros((height, width, channels), np.uint8)
    h, w = placed_size(image.shape[:2], scale, input_size)
    src = image[:, :, 0] if image.shape[2] == 1 else image
    if (h, w) != image.shape[:2]:
        interp = cv2.INTER_AREA if h < image.shape[0] else cv2.INTER_LINEAR
        src = cv2.resize(src, (w, h), interpolation=interp)
    out[:h, :w] = convert_channels(src, pixel_format, color)
    pad_border(out, (h, w), pad)
    return out, (h, w)


def describe_fit(
    frame: tuple[int, int], fit: str, scale: float | None, input_size: tuple[int, int]
) -> tuple[str, bool]:
    """-> (how a frame of size `frame` (height, width) becomes a network input, whether its aspect ratio or
    scale changes beyond what the model asks for). The daemon logs it at start-up, so that neither is silent."""
    fh, fw = frame
    height, width = input_size
    if fit == "place" and scale is not None:
        h, w = placed_size(frame, scale, input_size)
        actual = placed_scale(frame, scale, input_size)
        if actual < scale - 1e-9:
            return (
                f"placed: a {fw}x{fh} frame does not fit the {width}x{height} input at scale {scale:g}; it is shrunk "
                f"to {w}x{h} (scale {actual:.3g}, aspect ratio kept): defects look smaller than in training",
                True,
            )
        return f"placed: a {fw}x{fh} frame becomes {w}x{h} at the input's top-left (scale {scale:g})", False
    change = (width / height) / (fw / fh)
    text = f"squashed: a {fw}x{fh} frame is resized to {width}x{height}"
    if abs(change - 1) > 0.01:
        return f"{text}, its aspect ratio stretched by {change:.3g} (as the model was trained: fit squash)", True
    return text, False


def pad_border(canvas: np.ndarray, placed: tuple[int, int], pad: str) -> np.ndarray:
    """Fill `canvas` (H, W, C) outside its top-left `placed` (h, w) region, in place: zeros or the mirror image."""
    h, w = placed
    height, width = canvas.shape[:2]
    if (h, w) == (height, width):
        return canvas
    if pad == "zero":
        canvas[h:] = 0
        canvas[:h, w:] = 0
        return canvas
    if pad != "reflect":
        raise ValueError(f"pad must be zero or reflect, not {pad!r}")
    view = canvas[:, :, 0] if canvas.shape[2] == 1 else canvas
    # A frame of one row or column has nothing to mirror: repeat its edge.
    border = cv2.BORDER_REPLICATE if h < 2 or w < 2 else cv2.BORDER_REFLECT_101
    filled = cv2.copyMakeBorder(np.ascontiguousarray(view[:h, :w]), 0, height - h, 0, width - w, border)
    view[...] = filled
    return canvas


def valid_grid(placed: tuple[int, int], block: int) -> tuple[int, int]:
    """Blocks (rows, columns) of the output grid that hold at least one image pixel of a placed frame."""
    return math.ceil(placed[0] / block), math.ceil(placed[1] / block)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label mask (H, W) uint8 -> (height, width): nearest neighbour, so class ids stay class ids.

    A defect thinner than the scale factor can vanish; `inspector.train.labels` keeps block labels from the
    full-resolution mask instead, for that reason.
    """
    height, width = size
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


class Preprocessor:
    """Writes frames into a preallocated (batch, height, width, channels) uint8 network input, in place.

    One instance per model input. fit squash (the default): the frame is resized to the input with
    `interpolation`, then its channels converted. fit place (`scale` given): the frame is resized by `scale`
    and written to the row's top-left corner with zeros elsewhere, exactly as `place_image` does for training
    and evaluation. A frame may be smaller than the ring slot it lies in: callers pass the view of the frame
    itself. Scratch arrays (a resize plus a channel conversion cannot be one OpenCV call; a placed region is not
    contiguous) are made once per frame size. Copies per frame: one resize and, for mono->rgb or rgb->gray, one
    conversion; placing adds a copy of the placed region.
    """

    def __init__(
        self,
        batch: int,
        size: tuple[int, int],
        color: Literal["gray", "rgb"],
        pixel_format: str,
        interpolation: str = "area",
        *,
        fit: Literal["squash", "place"] = "squash",
        scale: float | None = None,
        pad: Literal["zero", "reflect"] = "zero",
    ):
        height, width = size
        self.color = color
        self.pixel_format = pixel_format
        self.channels = 1 if color == "gray" else 3
        self.interp = INTERPOLATION[interpolation]
        self.size = (height, width)
        if (fit == "place") != (scale is not None):
            raise ValueError("fit place needs a scale, and only fit place has one")
        self.scale = scale
        self.pad = pad
        self.buffer = np.zeros((batch, height, width, self.channels), dtype=np.uint8)
        in_channels = 1 if pixel_format == "mono8" else 3
        self._in_channels = in_channels
        self._needs_conversion = (in_channels != self.channels) or (pixel_format == "bgr8" and color == "rgb")
        self._scratch = np.zeros((height, width, in_channels), dtype=np.uint8) if self._needs_conversion else None
        self._code = 0  # cv2 conversion code; used only when _needs_conversion
        if self._needs_conversion:
            if self.channels == 1:
                self._code = cv2.COLOR_RGB2GRAY if pixel_format == "rgb8" else cv2.COLOR_BGR2GRAY
            elif in_channels == 1:
                self._code = cv2.COLOR_GRAY2RGB
            else:
                self._code = cv2.COLOR_BGR2RGB
        # fit place, per frame (height, width): (placed height, width, resized scratch, converted scratch).
        self._placed: dict[tuple[int, int], tuple[int, int, np.ndarray | None, np.ndarray | None]] = {}

    @classmethod
    def for_model(cls, manifest: ModelManifest, batch: int, pixel_format: str) -> Preprocessor:
        """The preprocessing a model's manifest asks for, for frames in `pixel_format`."""
        pre = manifest.preprocessing
        return cls(
            batch,
            (manifest.input.height, manifest.input.width),
            pre.color,
            pixel_format,
            pre.resize,
            fit=pre.fit,
            scale=pre.scale,
            pad=pre.pad,
        )

    def put(self, index: int, frame: np.ndarray) -> np.ndarray:
        """Resize/convert `frame` (H, W, C) into row `index` of the batch buffer; returns that row."""
        dst: np.ndarray = self.buffer[index]
        if self.scale is not None:
            self._put_placed(dst, frame)
            return dst
        height, width = self.size
        if not self._needs_conversion:
            target = dst[:, :, 0] if self.channels == 1 else dst
            src = frame[:, :, 0] if frame.shape[2] == 1 else frame
            cv2.resize(src, (width, height), dst=target, interpolation=self.interp)
            return dst
        scratch = self._scratch
        assert scratch is not None
        src = frame[:, :, 0] if frame.shape[2] == 1 else frame
        tgt = scratch[:, :, 0] if scratch.shape[2] == 1 else scratch
        cv2.resize(src, (width, height), dst=tgt, interpolation=self.interp)
        out = dst[:, :, 0] if self.channels == 1 else dst
        cv2.cvtColor(tgt, self._code, dst=out)
        return dst

    def placed(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) a frame of this size takes in the input (fit place; the whole input for squash)."""
        if self.scale is None:
            return self.size
        return self._placing(frame_size)[:2]

    def _placing(self, frame_size: tuple[int, int]) -> tuple[int, int, np.ndarray | None, np.ndarray | None]:
        found = self._placed.get(frame_size)
        if found is None:
            assert self.scale is not None
            ph, pw = placed_size(frame_size, self.scale, self.size)
            resized = None if (ph, pw) == frame_size else np.zeros((ph, pw, self._in_channels), np.uint8)
            converted = np.zeros((ph, pw, self.channels), np.uint8) if self._needs_conversion else None
            found = self._placed[frame_size] = (ph, pw, resized, converted)
        return found

    def _put_placed(self, dst: np.ndarray, frame: np.ndarray) -> None:
        # The same steps as place_image (training's): resize by scale (area down, linear up, none at 1.0), then
        # convert the channels, then the top-left corner of the input, the rest padded as the manifest says.
        h, w = frame.shape[:2]
        ph, pw, resized, converted = self._placing((h, w))
        height, width = self.size
        reflect = self.pad == "reflect" and (ph, pw) != (height, width)
        if not reflect:
            if ph < height:
                dst[ph:] = 0
            if pw < width:
                dst[:ph, pw:] = 0
        src = frame
        if resized is not None:
            interp = cv2.INTER_AREA if ph < h else cv2.INTER_LINEAR
            cv2.resize(
                frame[:, :, 0] if frame.shape[2] == 1 else frame,
                (pw, ph),
                dst=resized[:, :, 0] if resized.shape[2] == 1 else resized,
                interpolation=interp,
            )
            src = resized
        if converted is not None:
            cv2.cvtColor(
                src if src.shape[2] != 1 else src[:, :, 0],
                self._code,
                dst=converted if converted.shape[2] != 1 else converted[:, :, 0],
            )
            src = converted
        if reflect:
            # The placed frame and its mirror image around it in one call, written into the row in place
            # (pad_border's arithmetic; a frame of one row or column has nothing to mirror: its edge repeats).
            border = cv2.BORDER_REPLICATE if ph < 2 or pw < 2 else cv2.BORDER_REFLECT_101
            two_d = src.shape[2] == 1
            cv2.copyMakeBorder(
                src[:, :, 0] if two_d else src,
                0,
                height - ph,
                0,
                width - pw,
                border,
                dst=dst[:, :, 0] if two_d else dst,
            )
            return
        np.copyto(dst[:ph, :pw], src)
