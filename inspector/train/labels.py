"""Pixel masks -> 32x32 block labels for the recognizer, and the resize-vs-tiling measurement.

Block rule. The whole image is resized to the network input (gh*32, gw*32), so block (i, j) covers the
full-resolution rows [i*H/gh, (i+1)*H/gh) and columns [j*W/gw, (j+1)*W/gw). Defect pixels are counted **at
full resolution**: each defect pixel belongs to the block that contains its centre ((y + 0.5) * gh / H), and a
block is defective when it holds at least `min_pixels` defect pixels (default 1: any defect pixel). The count
is never taken from a resized mask, so a 1-pixel blowhole or a 1-pixel-wide crack that a nearest-neighbour
resize would drop still makes its block defective. A defect straddling a block border marks every block
that holds one of its pixels.

Why 1 and not a minimum count: the paper's small defects are 1..99 px, and a minimum of, say, 10 px would
turn most of them into "normal" blocks — the opposite of what the line needs. Anti-aliasing fuzz is removed
earlier, by the mask threshold (`datasets.MT_MASK_THRESHOLD` for Magnetic Tile).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from inspector.preprocess import resize_mask

BLOCK = 32


def grid_for(size: tuple[int, int], block: int = BLOCK) -> tuple[int, int]:
    """Network input (height, width) -> block grid (gh, gw)."""
    height, width = size
    if height % block or width % block:
        raise ValueError(f"input size {height}x{width} is not a multiple of {block}")
    return height // block, width // block


def block_counts(defect: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(H, W) defect map (bool or label, non-zero = defect) -> (gh, gw) int64 defect-pixel count per block."""
    gh, gw = grid
    height, width = defect.shape
    ys, xs = np.nonzero(defect)
    by = np.minimum(((ys + 0.5) * gh / height).astype(np.int64), gh - 1)
    bx = np.minimum(((xs + 0.5) * gw / width).astype(np.int64), gw - 1)
    counts = np.zeros((gh, gw), np.int64)
    np.add.at(counts, (by, bx), 1)
    return counts


def block_labels(defect: np.ndarray, grid: tuple[int, int], min_pixels: int = 1) -> np.ndarray:
    """(H, W) defect map -> (gh, gw) uint8, 1 = defective block (>= min_pixels defect pixels, full resolution)."""
    if min_pixels < 1:
        raise ValueError("min_pixels must be >= 1")
    return (block_counts(defect, grid) >= min_pixels).astype(np.uint8)


def measure_resize(
    masks: Sequence[np.ndarray],
    sizes: Sequence[tuple[int, int]],
    block: int = BLOCK,
) -> list[dict[str, float]]:
    """How small defects fare when the whole image is resized to each network size, vs native tiling.

    Per size, over the given defect masks (full resolution, bool):
    - `nearest_kept`: fraction whose defect keeps >= 1 pixel in a nearest-neighbour resized mask (what a
      segmenter's training label at network resolution keeps);
    - `area_peak_median`: median over masks of the largest INTER_AREA-resized mask value (1.0: some network
      pixel is entirely defect; 0.2: the defect is diluted to a fifth of a pixel, its contrast cut 5x);
    - `diluted`: fraction whose peak is below 0.5 (no network pixel is even half defect: a faint smear);
    - `min_side_median`: median of the defect's smaller bounding-box side in network pixels (thinness);
    - `blocks_kept`: fraction that keeps >= 1 defective block under the block rule (1.0 by construction);
    - `scale_median`: median linear downscale factor (max of the two axes); `tiles_mean`: mean number of
      size-sized tiles needed to cover the image at native resolution (inference cost relative to resize).
    """
    results = []
    for size in sizes:
        grid = grid_for(size, block)
        kept = blocks = 0
        peak_values, scales, tiles, sides = [], [], [], []
        for mask in masks:
            m = mask.astype(np.uint8)
            kept += bool(resize_mask(m, size).any())
            area = cv2.resize(m.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
            peak_values.append(float(area.max()))
            blocks += bool(block_labels(mask, grid).any())
            h, w = mask.shape
            ys, xs = np.nonzero(mask)
            if len(ys):
                sides.append(min((np.ptp(ys) + 1) * size[0] / h, (np.ptp(xs) + 1) * size[1] / w))
            scales.append(max(h / size[0], w / size[1]))
            tiles.append(math.ceil(h / size[0]) * math.ceil(w / size[1]))
        n = max(len(masks), 1)
        results.append(
            {
                "height": size[0],
                "width": size[1],
                "masks": len(masks),
                "nearest_kept": kept / n,
                "area_peak_median": float(np.median(peak_values)) if peak_values else 0.0,
                "diluted": float(np.mean(np.array(peak_values) < 0.5)) if peak_values else 0.0,
                "min_side_median": float(np.median(sides)) if sides else 0.0,
                "blocks_kept": blocks / n,
                "scale_median": float(np.median(scales)) if scales else 0.0,
                "tiles_mean": float(np.mean(tiles)) if tiles else 0.0,
            }
        )
    return results
