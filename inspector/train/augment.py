"""Joint image/mask augmentation, as one OpenCV warp per crop: rotation, zoom, flips, a slight perspective, and
brightness / contrast / saturation — the paper's set (rotation, perspective, brightness, saturation) plus flips
and zoom.

Geometry. `crop_transform` builds one 3x3 homography from source-image pixels to crop pixels (centre the crop
on a chosen point, flip, rotate, zoom, jitter the corners); `warp` applies it to the image (bilinear) and to the
defect mask (bilinear on 0/1, then "> 0"), so a one-pixel defect is never lost to nearest-neighbour sampling and
the crop is cut, rotated and resampled in a single interpolation (cheap: ~0.2 ms for 256x256 on one core,
measured by tools/bench_training.py). Pixels from outside the image are the `pad` border in the image (mirrored
by default, or zeros: the same border the daemon and evaluation put around a frame, inspector.preprocess) and 0
in the mask (a mirrored defect is not scored).

Photometric changes run on the crop through one 256-entry lookup table (brightness and contrast; 0 stays 0, so
a zero border stays what the daemon feeds with `pad: zero`), and for colour images a saturation blend with the gray
version.

Randomness comes only from the generator passed in (seeded per item from (seed, epoch, index)), so an item's
augmentation does not depend on worker count, process rank or whether training was resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class AugmentConfig:
    enabled: bool = True
    rotation_deg: float = 10.0  # uniform in [-deg, +deg]
    zoom: float = 0.1  # scale factor uniform in [1 - zoom, 1 + zoom]
    perspective: float = 0.05  # each corner moves up to this fraction of the crop side ("slight")
    perspective_p: float = 0.5
    brightness: float = 0.2  # additive, as a fraction of 255, uniform in [-b, +b]
    contrast: float = 0.2  # factor uniform in [1 - c, 1 + c] around the crop's mean
    saturation: float = 0.2  # colour images only; grayscale has no saturation
    hflip: bool = True  # not in the paper; true for the surfaces this project inspects (say no if yours differ)
    vflip: bool = True


def crop_transform(
    center: tuple[float, float],
    out_size: tuple[int, int],
    rng: np.random.Generator | None,
    cfg: AugmentConfig | None,
) -> np.ndarray:
    """3x3 homography: source pixel (x, y, 1) -> crop pixel, the crop of `out_size` (h, w) centred on `center`
    (y, x) of the source. Without a generator (or with augmentation off): a plain translation (an exact cut)."""
    h, w = out_size
    cy, cx = center
    to_origin = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    to_crop = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]], np.float64)
    if rng is None or cfg is None or not cfg.enabled:
        return to_crop @ to_origin
    angle = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)) if cfg.rotation_deg > 0 else 0.0
    zoom = rng.uniform(1 - cfg.zoom, 1 + cfg.zoom) if cfg.zoom > 0 else 1.0
    fx = -1.0 if cfg.hflip and rng.random() < 0.5 else 1.0
    fy = -1.0 if cfg.vflip and rng.random() < 0.5 else 1.0
    c, s = math.cos(angle) * zoom, math.sin(angle) * zoom
    linear = np.array([[c * fx, -s * fy, 0], [s * fx, c * fy, 0], [0, 0, 1]], np.float64)
    m = to_crop @ linear @ to_origin
    if cfg.perspective > 0 and rng.random() < cfg.perspective_p:
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
        jitter = rng.uniform(-cfg.perspective, cfg.perspective, (4, 2)) * np.array([w, h])
        m = cv2.getPerspectiveTransform(corners, (corners + jitter).astype(np.float32)).astype(np.float64) @ m
    return m


BORDERS = {"zero": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101}


def warp(
    image: np.ndarray, mask: np.ndarray | None, m: np.ndarray, out_size: tuple[int, int], pad: str = "zero"
) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) uint8 image and (H, W) uint8 label -> the crop of both under `m`.

    Outside the image the crop is `pad`: zeros, or the image mirrored at its edges (preprocess.place_image's
    two borders). The label is warped as a 0/1 defect map with bilinear weights and a pixel of the crop is
    defect when any defect pixel contributed to it (> 0), carrying the image's class id (max of the label): a
    defect is never thinned away; outside the image the label is 0 (a mirrored defect is not a defect: those
    pixels are not scored, `valid_map`). Integer translations (m without rotation/zoom) are exact cuts.
    """
    h, w = out_size
    src = image[:, :, 0] if image.shape[2] == 1 else image
    out = cv2.warpPerspective(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=BORDERS[pad], borderValue=0)
    if out.ndim == 2:
        out = out[:, :, None]
    if mask is None:
        return out, None
    cls = int(mask.max()) if mask.size else 0
    if cls == 0:
        return out, np.zeros((h, w), np.uint8)
    defect = (mask > 0).astype(np.float32)
    warped = cv2.warpPerspective(
        defect, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    # Multi-class masks keep their ids via nearest sampling inside the defect; single-class ones need no lookup.
    if np.any((mask > 0) & (mask != cls)):  # another id beside the largest: cheaper than np.unique per crop
        ids = cv2.warpPerspective(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
        label = np.where(warped > 1e-3, np.maximum(ids, 1), 0).astype(np.uint8)
    else:
        label = ((warped > 1e-3) * cls).astype(np.uint8)
    return out, label


def valid_map(image_size: tuple[int, int], m: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """(h, w) bool of the crop: the pixels that come from the image (nearest), not from its border."""
    ones = np.ones(image_size, np.uint8)
    h, w = out_size
    return cv2.warpPerspective(ones, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0) > 0


def photometric(image: np.ndarray, rng: np.random.Generator | None, cfg: AugmentConfig | None) -> np.ndarray:
    """Brightness, contrast (one LUT) and saturation (colour only), in place on a uint8 crop; returns it."""
    if rng is None or cfg is None or not cfg.enabled:
        return image
    b = rng.uniform(-cfg.brightness, cfg.brightness) * 255 if cfg.brightness > 0 else 0.0
    k = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) if cfg.contrast > 0 else 1.0
    sat = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) if cfg.saturation > 0 else 1.0
    if b or k != 1.0:
        mean = float(image.mean())
        lut = np.clip((np.arange(256, dtype=np.float32) - mean) * k + mean + b, 0, 255).astype(np.uint8)
        # 0 stays 0: with `pad: zero` the border around a placed frame is zero in the daemon, whatever the lighting did.
        lut[0] = 0
        image[...] = cv2.LUT(image, lut).reshape(image.shape)
    if image.shape[2] == 3 and sat != 1.0:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None].astype(np.float32)
        image[:] = np.clip(gray + (image.astype(np.float32) - gray) * sat, 0, 255).astype(np.uint8)
    return image
