"""Training data: decode each image once, keep it at the training scale, and cut augmented crops from memory.

Why. Decoding a JPEG, resizing it and augmenting it with tensor ops for every item cost more CPU than the tiny
networks' own training step (tools/bench_training.py measures both paths side by side). Here an image is
decoded, converted to the network's channels and resized to the training scale once (`ImageCache`), then every
training item is one `cv2.warpPerspective` of a crop out of that array (augment.py) and a lookup table.

Scale and input. `scale` is network pixels per image pixel: 1.0 trains and runs at native resolution (the
default: few-pixel defects stay few pixels instead of being averaged away by a squash to 224x224). The network
input (`input_size`) is fixed per model: a frame is resized by `scale` and placed at its top-left corner, the
rest is zero (inspector.preprocess.place_image) — in evaluation, in export parity checks and in the daemon
alike. Training crops are cut from the same zero-bordered picture, so the network learns what the border looks
like; blocks that hold no image pixel are never scored.

Labels. At scale 1.0 the label is the mask itself. Downscaled, a pixel is defect when any defect pixel of the
full-resolution mask falls in its area (INTER_AREA > 0), so a one-pixel defect survives a 4x shrink. Block labels
and the dense auxiliary targets are counted on the crop's label, whose block grid is the network's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from inspector.preprocess import pad_border, place_image, placed_size, resize_image
from inspector.train.augment import AugmentConfig, crop_transform, photometric, valid_map, warp
from inspector.train.datasets import Sample, image_pixel_format, load_sample

BLOCK = 32


@dataclass
class CachedImage:
    sample: Sample
    image: np.ndarray  # (h, w, C) uint8 at the training scale, network channels
    label: np.ndarray  # (h, w) uint8: 0 background, 1 + class index on defect pixels
    defect_yx: np.ndarray  # (n, 2) int32: up to 4096 defect pixels (for crops centred on a defect)
    source_size: tuple[int, int] = (0, 0)  # (h, w) of the image as stored, before scaling or squashing

    @property
    def defective(self) -> bool:
        return self.sample.defective


def round_up(value: int, multiple: int = BLOCK) -> int:
    return int(math.ceil(value / multiple) * multiple)


def input_size_for(sizes: list[tuple[int, int]], scale: float) -> tuple[int, int]:
    """The smallest network input (multiples of 32) that holds every image of `sizes` at `scale`."""
    if not sizes:
        raise ValueError("no images to size the network input from")
    height = max(round(h * scale) for h, _ in sizes)
    width = max(round(w * scale) for _, w in sizes)
    return round_up(height), round_up(width)


def scale_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Full-resolution label -> `size` (h, w): defect wherever a defect pixel falls in the area (any-rule)."""
    if label.shape == size:
        return label
    h, w = size
    if not label.any():
        return np.zeros(size, np.uint8)
    covered = cv2.resize((label > 0).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0
    ids = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    # Where nearest sampling missed the defect, take the image's (most common) defect id.
    fallback = np.bincount(label[label > 0]).argmax()
    return np.where(covered, np.where(ids > 0, ids, fallback), 0).astype(np.uint8)


def load_cached(
    sample: Sample, classes: list[str], scale: float | None, input_size: tuple[int, int], color: str
) -> CachedImage:
    """One sample at the training scale; `scale` None squashes it to `input_size` (the classifier baseline)."""
    image, label = load_sample(sample, classes)
    fmt = image_pixel_format(image)
    if scale is None:
        h, w = input_size
        canvas = resize_image(image, input_size, pixel_format=fmt, color=color)  # type: ignore[arg-type]
    else:
        placed = placed_size(image.shape[:2], scale, input_size)
        canvas, (h, w) = place_image(image, scale, placed, pixel_format=fmt, color=color)  # type: ignore[arg-type]
    small = scale_label(label, (h, w))
    ys, xs = np.nonzero(small)
    if len(ys) > 4096:
        keep = np.linspace(0, len(ys) - 1, 4096).astype(np.int64)
        ys, xs = ys[keep], xs[keep]
    source = (int(image.shape[0]), int(image.shape[1]))
    return CachedImage(sample, canvas[:h, :w], small, np.stack([ys, xs], 1).astype(np.int32), source)


class ImageCache:
    """Every sample decoded once at the training scale (see the module docstring).

    `lazy` decodes on every access instead (for data sets larger than memory): slower, and item for item the
    same arrays, so batches do not depend on it (a test checks that)."""

    def __init__(
        self,
        samples: list[Sample],
        classes: list[str],
        scale: float | None,
        input_size: tuple[int, int],
        color: str,
        progress: bool = False,
        lazy: bool = False,
    ):
        self.samples, self.classes = samples, classes
        self.scale, self.input_size, self.color, self.lazy = scale, input_size, color, lazy
        self.defective_flags = [s.defective for s in samples]
        self._items: list[CachedImage] = []
        if not lazy:
            iterator = samples
            if progress:
                from tqdm import tqdm

                iterator = tqdm(samples, desc="decoding", leave=False)
            self._items = [load_cached(s, classes, scale, input_size, color) for s in iterator]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> CachedImage:
        if self.lazy:
            return load_cached(self.samples[index], self.classes, self.scale, self.input_size, self.color)
        return self._items[index]

    @property
    def items(self) -> list[CachedImage]:
        return self._items if not self.lazy else [self[i] for i in range(len(self))]

    def stretch(self) -> np.ndarray:
        """Per cached image, how much squashing stretched its aspect ratio (>= 1, both directions alike; 1 when
        the aspect ratio is kept). Lazy caches are not decoded for this: an empty array."""
        if self.lazy or self.scale is not None:
            return np.ones(0 if self.lazy else len(self._items))
        h, w = self.input_size
        ratios = np.array([(h / it.source_size[0]) / (w / it.source_size[1]) for it in self._items], np.float64)
        return np.maximum(ratios, 1 / ratios) if len(ratios) else ratios

    @property
    def nbytes(self) -> int:
        return sum(it.image.nbytes + it.label.nbytes for it in self._items)


def crop_center(item: CachedImage, crop: tuple[int, int], rng: np.random.Generator, defect_bias: float):
    """(y, x) the training window is centred on.

    By default (defect_bias 0) the window lies uniformly inside the image where the image is larger than the
    window, and at its top-left corner where it is smaller (as the daemon places a frame), for defective and
    defect-free images alike, so where a block sits in the window says nothing about its label. With
    `defect_bias` > 0 a defective image's window is, with that probability, placed anywhere that contains one
    of its defect pixels — for frames much larger than the window, where uniform windows would rarely hold a
    defect. (Measured on Magnetic Tile: windows kept within a quarter of the crop around the defect let the
    network read "defects sit in the middle" from the zero padding — block AUROC 0.52 on whole images.)"""
    h, w = item.image.shape[:2]
    ch, cw = crop

    def axis(size: int, window: int, around: float | None) -> float:
        if around is not None:
            lo, hi = around - window + 1, around
        else:
            lo, hi = 0.0, max(size - window, 0)
        lo, hi = max(lo, 0.0) if size > window else 0.0, min(hi, max(size - window, 0))
        start = rng.uniform(lo, max(lo, hi)) if hi > lo else lo
        return start + window / 2

    if len(item.defect_yx) and defect_bias > 0 and rng.random() < defect_bias:
        y, x = item.defect_yx[int(rng.integers(len(item.defect_yx)))]
        return axis(h, ch, float(y)), axis(w, cw, float(x))
    return axis(h, ch, None), axis(w, cw, None)


def training_crop(
    item: CachedImage,
    crop: tuple[int, int],
    rng: np.random.Generator,
    augment: AugmentConfig | None,
    defect_bias: float,
    pad: str = "zero",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented (crop_h, crop_w, C) uint8 crop, its (crop_h, crop_w) label and valid (image) pixels."""
    m = crop_transform(crop_center(item, crop, rng, defect_bias), crop, rng, augment)
    image, label = warp(item.image, item.label, m, crop, pad)
    assert label is not None
    return photometric(image, rng, augment), label, valid_map(item.image.shape[:2], m, crop)


def placed_input(
    item: CachedImage, input_size: tuple[int, int], out: np.ndarray | None = None, pad: str = "zero"
) -> np.ndarray:
    """The cached image at the top-left of a network input, the rest `pad`: what evaluation and the daemon feed."""
    height, width = input_size
    if out is None:
        out = np.zeros((height, width, item.image.shape[2]), np.uint8)
    h, w = item.image.shape[:2]
    out[:h, :w] = item.image
    return pad_border(out, (h, w), pad)


def cell_counts(mask: np.ndarray, cell: int) -> np.ndarray:
    """(H, W) bool or 0/1 -> (H/cell, W/cell) int32: the True pixels in each cell.

    An area resize of the float mask at an integer factor is the cell's mean; times the cell's area (a power
    of two for every cell used here, so exact in float32) it is the count. On a 224x224 mask it took ~50 us
    against 90-100 us for numpy's sum over a reshaped array's axes (1, 3) and 180-310 us for its max (a throwaway
    timeit on the shared box); it runs several times per image of every training batch."""
    h, w = mask.shape
    if h % cell or w % cell:
        raise ValueError(f"a {h}x{w} mask is not a whole number of {cell}x{cell} cells")
    mean = cv2.resize(mask.astype(np.float32), (w // cell, h // cell), interpolation=cv2.INTER_AREA)
    return np.rint(mean * (cell * cell)).astype(np.int32)


def block_targets(label: np.ndarray, block: int = BLOCK, min_pixels: int = 1) -> np.ndarray:
    """(H, W) label of a block-aligned crop -> (H/block, W/block) uint8: 1 where >= min_pixels defect pixels."""
    return (cell_counts(label > 0, block) >= min_pixels).astype(np.uint8)


def cell_any(valid: np.ndarray, cell: int) -> np.ndarray:
    """(H, W) bool -> (H/cell, W/cell) bool: cells holding any True pixel (blocks that hold image pixels)."""
    return cell_counts(valid, cell) > 0


def dense_targets(label: np.ndarray, stride: int = 8, dilate_px: int = 0) -> np.ndarray:
    """(H, W) label -> (H/stride, W/stride) float32 in {0, 1}: a cell is defect when a defect pixel of the
    label, dilated by `dilate_px`, falls in it (SegDecNet's dilated, max-pooled masks: thin or coarsely drawn
    defects are not under-covered at the coarse stride)."""
    defect = (label > 0).astype(np.uint8)
    if dilate_px > 0 and defect.any():
        k = 2 * dilate_px + 1
        defect = cv2.dilate(defect, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return (cell_counts(defect, stride) > 0).astype(np.float32)


def defect_patch(item: CachedImage, rng: np.random.Generator, margin: int = 6, max_side: int = 160):
    """A real defect cut from a defective cached image: (patch (h, w, C) uint8, label (h, w) uint8, alpha (h, w)
    float32 feathered over `margin` px), or None. One connected defect region, with `margin` px of its
    surroundings, at most `max_side` px (larger defects are cut to a window around one of their pixels)."""
    if not len(item.defect_yx):
        return None
    import cv2

    y, x = item.defect_yx[int(rng.integers(len(item.defect_yx)))]
    defect = (item.label > 0).astype(np.uint8)
    _, components = cv2.connectedComponents(defect, connectivity=8)
    region = components == components[y, x]
    ys, xs = np.nonzero(region)
    h, w = item.label.shape
    top, bottom = max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin + 1, h)
    left, right = max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin + 1, w)
    if bottom - top > max_side:
        top = int(np.clip(y - max_side // 2, 0, h - max_side))
        bottom = top + max_side
    if right - left > max_side:
        left = int(np.clip(x - max_side // 2, 0, w - max_side))
        right = left + max_side
    keep = region[top:bottom, left:right].astype(np.uint8)
    if keep.sum() == 0:
        return None
    # Alpha: 1 on the dilated defect, fading to 0 over `margin` px, so the pasted surroundings blend in.
    grown = cv2.dilate(keep, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (margin + 1, margin + 1)))
    alpha = cv2.GaussianBlur(grown.astype(np.float32), (0, 0), sigmaX=max(margin / 2, 1))
    alpha = np.maximum(alpha, keep.astype(np.float32))
    label = np.where(keep > 0, item.label[top:bottom, left:right], 0).astype(np.uint8)
    return item.image[top:bottom, left:right].copy(), label, alpha


def paste_defect(
    image: np.ndarray,
    label: np.ndarray,
    valid: np.ndarray,
    patch: tuple[np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> bool:
    """Blend `patch` into `image` (in place) at a random position inside the valid (image) pixels, matched to
    the local brightness there; the label gets the patch's defect pixels. -> whether it was pasted."""
    pix, lab, alpha = patch
    if rng.random() < 0.5:
        pix, lab, alpha = pix[:, ::-1], lab[:, ::-1], alpha[:, ::-1]
    if rng.random() < 0.5:
        pix, lab, alpha = pix[::-1], lab[::-1], alpha[::-1]
    ph, pw = lab.shape
    h, w = label.shape
    if ph >= h or pw >= w:
        return False
    for _ in range(8):  # a position whose whole patch lies on image pixels
        top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        if valid[top : top + ph, left : left + pw].all():
            break
    else:
        return False
    target = image[top : top + ph, left : left + pw].astype(np.float32)
    src = pix.astype(np.float32)
    ring = alpha < 0.5
    if ring.any():  # shift the patch to the brightness of where it lands (measured on its surroundings)
        src += target[ring].mean() - src[ring].mean()
    a = alpha[:, :, None]
    image[top : top + ph, left : left + pw] = np.clip(a * src + (1 - a) * target, 0, 255).astype(np.uint8)
    region = label[top : top + ph, left : left + pw]
    region[lab > 0] = lab[lab > 0]
    return True
