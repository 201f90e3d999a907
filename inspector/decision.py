"""Scores -> verdict: the thresholds a line engineer tunes (`decision:` in the line config, docs/CONFIG.md).

Coordinates. Preprocessing resizes the whole frame to the network input (no crop, no letterbox), so a
network grid of (gh, gw) cells maps onto the frame by one scale per axis: cell (r, c) covers frame rows
[r * cell_h, (r + 1) * cell_h) and columns [c * cell_w, (c + 1) * cell_w). `GridMap` is that mapping, defined
once and used for both grids: the segmenter's (a cell is one output pixel) and the recognizer's (a cell is one
block). Areas and boxes in verdicts are in frame pixels; ignore regions are given in frame pixels and mapped
down to each grid once, at construction.

Ignore regions, per grid:
- segmenter pixels: ignored when at least half of the frame area they cover is ignored;
- recognizer blocks: ignored only when the ignore regions cover all of the block. A block that is partly
  outside could hold a real defect in the part that counts, so it still flags the frame (the segmenter then
  looks at pixels) and, in blocks-only mode, still rejects. Fail-safe in both cases.

Blobs below their minimum area do not reject and are not listed: a verdict's `defects` are exactly the blobs
that caused its reject (a pass lists none), so a PLC or MES can act on the list without re-applying the
thresholds. How many blobs were dropped for being small is kept in `Decider.last_below_min_area` (for
metrics and tuning).

Blobs are 8-connected: thin diagonal defects (cracks, scratches) stay one blob instead of breaking into
single pixels that each fall below the minimum area.

Per batch, `screen` applies the block threshold and takes each frame's highest score for the whole batch in a few
NumPy calls; connected components (`decide`) run only for the frames where something fired or the segmenter ran.
A frame that `screen` passes is exactly what `decide` would pass (tests/test_decision.py checks the two agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from inspector.config import DecisionConfig
from inspector.frames import Defect, Reason, Result
from inspector.manifest import ModelManifest

BLOCK_CLASS = "defect"  # class of blobs made from recognizer blocks (no segmenter output)
PIXEL_IGNORE_FRACTION = 0.5  # a segmenter pixel is ignored when at least this much of it is ignored
BLOCK_IGNORE_FRACTION = 0.999  # a block is ignored only when (all but rounding of) it is ignored
NO_DEFECTS: tuple[Defect, ...] = ()

Decision = tuple[Result, Reason, tuple[Defect, ...], float]  # result, reason, blobs largest first, top block score


@dataclass(frozen=True)
class GridMap:
    """A network grid laid over the frame: `cell_h` x `cell_w` frame pixels per grid cell."""

    grid_h: int
    grid_w: int
    frame_h: int
    frame_w: int
    cell_h: float
    cell_w: float
    # Where grid line i falls in frame pixels, as box starts and ends (bbox() is a lookup, not arithmetic).
    _x0: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _x1: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _y0: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _y1: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fw, fh = self.frame_w, self.frame_h
        xs, ys = range(self.grid_w + 1), range(self.grid_h + 1)
        object.__setattr__(self, "_x0", tuple(min(fw - 1, math.floor(i * self.cell_w)) for i in xs))
        object.__setattr__(self, "_x1", tuple(min(fw, math.ceil(i * self.cell_w)) for i in xs))
        object.__setattr__(self, "_y0", tuple(min(fh - 1, math.floor(i * self.cell_h)) for i in ys))
        object.__setattr__(self, "_y1", tuple(min(fh, math.ceil(i * self.cell_h)) for i in ys))

    @classmethod
    def for_input(cls, frame_size: tuple[int, int], input_size: tuple[int, int], cell: int = 1) -> GridMap:
        """The grid of a network with input (height, width), whose outputs have one cell per `cell` input px."""
        frame_h, frame_w = frame_size
        in_h, in_w = input_size
        return cls(
            in_h // cell,
            in_w // cell,
            frame_h,
            frame_w,
            cell * frame_h / in_h,
            cell * frame_w / in_w,
        )

    @property
    def cell_area(self) -> float:
        return self.cell_h * self.cell_w

    def bbox(self, x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
        """Grid box -> the frame pixels it covers (x, y, width, height), clipped to the frame."""
        x0, y0 = self._x0[x], self._y0[y]
        x1 = max(x0 + 1, self._x1[x + w])
        y1 = max(y0 + 1, self._y1[y + h])
        return x0, y0, x1 - x0, y1 - y0

    def area(self, cells: int) -> int:
        return round(cells * self.cell_area)

    def covered(self, frame_mask: np.ndarray, min_fraction: float) -> np.ndarray:
        """Frame-sized bool mask -> grid bool mask: cells of which at least `min_fraction` is covered."""
        fraction = np.zeros((self.grid_h, self.grid_w), np.float32)
        # The grid may stop short of the frame's edge when the input is not a multiple of the cell.
        used_h = min(self.frame_h, round(self.grid_h * self.cell_h))
        used_w = min(self.frame_w, round(self.grid_w * self.cell_w))
        src = frame_mask[:used_h, :used_w].astype(np.float32)
        cv2.resize(src, (self.grid_w, self.grid_h), dst=fraction, interpolation=cv2.INTER_AREA)
        return fraction >= min_fraction


def rasterize_ignore(cfg: DecisionConfig, frame_size: tuple[int, int], mask: np.ndarray | None) -> np.ndarray | None:
    """Polygons from the config plus the mask image -> one frame-sized bool mask (None when nothing is ignored)."""
    height, width = frame_size
    polygons = cfg.ignore_regions.polygons
    if not polygons and mask is None:
        return None
    ignored = np.zeros((height, width), np.uint8)
    for i, polygon in enumerate(polygons):
        one = np.zeros_like(ignored)
        # 4 bits of sub-pixel precision: config coordinates may be fractional.
        points = np.round(np.asarray(polygon, np.float64) * 16).astype(np.int32)
        cv2.fillPoly(one, [points], 1, lineType=cv2.LINE_8, shift=4)
        if not one.any():
            raise ValueError(
                f"decision.ignore_regions.polygons[{i}] lies outside the {width}x{height} frame "
                "(coordinates are frame pixels [x, y])"
            )
        ignored |= one
    if mask is not None:
        if mask.shape[:2] != (height, width):
            raise ValueError(
                f"decision.ignore_regions.mask is {mask.shape[1]}x{mask.shape[0]}, the frame is {width}x{height}"
            )
        ignored |= (mask if mask.ndim == 2 else mask.max(axis=2)) > 0
    return ignored > 0


def load_ignore_mask(path: str | Path, frame_size: tuple[int, int]) -> np.ndarray:
    """Read the ignore mask image (non-zero = ignored); refuse one that is not the frame's size."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"decision.ignore_regions.mask: cannot read image {path}")
    height, width = frame_size
    if mask.shape != (height, width):
        raise ValueError(
            f"decision.ignore_regions.mask {path} is {mask.shape[1]}x{mask.shape[0]}, the frame is {width}x{height}"
        )
    return mask > 0


class Decider:
    """Turns one frame's recognizer block scores (and, when the segmenter ran, its pixel scores) into a verdict.

    Construct once per config/model set (a reload builds a new one); `decide` is called from the inference
    thread only. Scratch arrays for both grids are allocated here; per frame only the connected-component
    statistics and the (few) reported blobs allocate.
    """

    def __init__(
        self,
        cfg: DecisionConfig,
        frame_size: tuple[int, int],
        recognizer: ModelManifest,
        segmenter: ModelManifest | None,
        ignore_mask: np.ndarray | None,
    ):
        self.cfg = cfg
        self.frame_size = frame_size
        if recognizer.task != "recognizer" or not recognizer.block_size:
            raise ValueError("the recognizer manifest is not a recognizer's")
        self.blocks = GridMap.for_input(
            frame_size, (recognizer.input.height, recognizer.input.width), recognizer.block_size
        )
        if (self.blocks.grid_h, self.blocks.grid_w) != recognizer.grid:
            raise ValueError(f"recognizer grid {recognizer.grid} disagrees with its input and block size")
        self.classes = segmenter.classes if segmenter is not None else ["background", BLOCK_CLASS]
        known = {*self.classes[1:], BLOCK_CLASS}
        unknown = sorted(set(cfg.min_area_px_per_class) - known)
        if unknown:
            raise ValueError(
                f"decision.min_area_px_per_class names {', '.join(unknown)}, not a defect class of the models "
                f"(known: {', '.join(sorted(known))})"
            )
        self._min_area = np.array(
            [cfg.min_area_px_per_class.get(c, cfg.min_area_px) for c in self.classes], dtype=np.int64
        )
        self._block_min_area = cfg.min_area_px_per_class.get(BLOCK_CLASS, cfg.min_area_px)

        ignored = rasterize_ignore(cfg, frame_size, ignore_mask)
        gh, gw = self.blocks.grid_h, self.blocks.grid_w
        self._block_keep = (
            np.ones((gh, gw), bool) if ignored is None else ~self.blocks.covered(ignored, BLOCK_IGNORE_FRACTION)
        )
        self._block_hit = np.zeros((gh, gw), bool)
        self._block_labels = np.zeros((gh, gw), np.int32)
        self._block_peaks = np.zeros(gh * gw + 1, np.float32)  # per blob label; at most one blob per block

        self.pixels: GridMap | None = None
        if segmenter is not None:
            if segmenter.task != "segmenter":
                raise ValueError("the segmenter manifest is not a segmenter's")
            self.pixels = GridMap.for_input(frame_size, (segmenter.input.height, segmenter.input.width))
            sh, sw = self.pixels.grid_h, self.pixels.grid_w
            self._pixel_keep = (
                np.ones((sh, sw), bool) if ignored is None else ~self.pixels.covered(ignored, PIXEL_IGNORE_FRACTION)
            )
            self._prob = np.zeros((sh, sw), np.float32)
            self._hit = np.zeros((sh, sw), bool)
            self._labels = np.zeros((sh, sw), np.int32)
        self.ignored_blocks = int((~self._block_keep).sum())
        self.last_below_min_area = 0
        self._batch_rows = 0  # batch scratch for screen(), grown to the largest batch seen (then never again)
        self._batch_hit = np.zeros((0, gh, gw), bool)
        self._batch_flagged = np.zeros(0, bool)
        self._batch_score = np.zeros(0, np.float32)

    # ------------------------------------------------------------------------------------ recognizer

    def _block_scores_checked(self, block_scores: np.ndarray) -> np.ndarray:
        if block_scores.shape != self._block_hit.shape:
            raise ValueError(f"block scores {block_scores.shape}, expected the grid {self._block_hit.shape}")
        return block_scores

    def flagged(self, block_scores: np.ndarray) -> bool:
        """Whether any block outside the ignore regions scores at or above block_threshold (gates the segmenter)."""
        hit = self._block_hit
        np.greater_equal(self._block_scores_checked(block_scores), self.cfg.block_threshold, out=hit)
        hit &= self._block_keep
        return bool(hit.any())

    def max_block_score(self, block_scores: np.ndarray) -> float:
        """Highest block score outside the ignore regions (0 when every block is ignored)."""
        scores = self._block_scores_checked(block_scores)
        return float(np.max(scores, where=self._block_keep, initial=0.0))

    def screen(self, block_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A batch's block scores (n, grid_h, grid_w) -> (flagged (n,) bool, highest score outside the ignore
        regions (n,) float32): `flagged` and `max_block_score` for every frame at once. The arrays are views of
        scratch reused by the next call."""
        n = block_scores.shape[0]
        if block_scores.shape[1:] != self._block_hit.shape:
            raise ValueError(f"block scores {block_scores.shape[1:]}, expected the grid {self._block_hit.shape}")
        if n > self._batch_rows:
            gh, gw = self._block_hit.shape
            self._batch_hit = np.zeros((n, gh, gw), bool)
            self._batch_flagged = np.zeros(n, bool)
            self._batch_score = np.zeros(n, np.float32)
            self._batch_rows = n
        hit, flagged, score = self._batch_hit[:n], self._batch_flagged[:n], self._batch_score[:n]
        np.greater_equal(block_scores, self.cfg.block_threshold, out=hit)
        if self.ignored_blocks:
            hit &= self._block_keep
            np.max(block_scores, axis=(1, 2), where=self._block_keep, initial=0.0, out=score)
        else:
            np.max(block_scores, axis=(1, 2), initial=0.0, out=score)
        np.any(hit, axis=(1, 2), out=flagged)
        return flagged, score

    # -------------------------------------------------------------------------------------- decision

    def decide(self, block_scores: np.ndarray, pixel_scores: np.ndarray | None) -> Decision:
        """-> (result, reason, defects largest first, highest block score outside ignore regions).

        block_scores: (grid_h, grid_w) P(defective block). pixel_scores: (classes, height, width) per-pixel class
        probabilities from the segmenter, or None when it did not run (segmenter_mode never, or gated and the
        frame was not flagged): then blobs are groups of defective blocks.
        """
        score = self.max_block_score(block_scores)
        blobs = self._block_blobs(block_scores) if pixel_scores is None else self._pixel_blobs(pixel_scores)
        if not blobs:
            return "pass", Reason.OK, NO_DEFECTS, score
        blobs.sort(key=lambda d: d.area_px, reverse=True)
        return "reject", Reason.DEFECT, tuple(blobs[: self.cfg.max_defects_reported]), score

    def decide_screened(self, i: int, block_scores: np.ndarray, pixel_scores: np.ndarray | None) -> Decision:
        """`decide` for frame i of the batch last given to `screen` (block_scores is that frame's row): its
        threshold mask and top score are reused instead of computed again."""
        score = float(self._batch_score[i])
        if pixel_scores is not None:
            blobs = self._pixel_blobs(pixel_scores)
        elif self._batch_flagged[i]:
            blobs = self._blobs_of(self._batch_hit[i], block_scores)
        else:
            self.last_below_min_area = 0
            return "pass", Reason.OK, NO_DEFECTS, score
        if not blobs:
            return "pass", Reason.OK, NO_DEFECTS, score
        blobs.sort(key=lambda d: d.area_px, reverse=True)
        return "reject", Reason.DEFECT, tuple(blobs[: self.cfg.max_defects_reported]), score

    def _block_blobs(self, block_scores: np.ndarray) -> list[Defect]:
        if not self.flagged(block_scores):  # fills self._block_hit
            self.last_below_min_area = 0
            return []
        return self._blobs_of(self._block_hit, block_scores)

    def _blobs_of(self, hit: np.ndarray, block_scores: np.ndarray) -> list[Defect]:
        """Blobs of flagged blocks (`hit`, the grid's bool mask), with their area, box and peak score."""
        labels, peaks = self._block_labels, self._block_peaks
        n, _, stats, _ = cv2.connectedComponentsWithStats(hit.view(np.uint8), labels, connectivity=8, ltype=cv2.CV_32S)
        # Every blob's peak score in one call (label 0, the background, collects the rest).
        peaks[:n] = 0.0
        np.maximum.at(peaks, labels.ravel(), block_scores.ravel())
        blobs = []
        small = 0
        for k, (x, y, w, h, cells) in enumerate(stats.tolist()):
            if k == 0:
                continue
            area = self.blocks.area(cells)
            if area < self._block_min_area:
                small += 1
                continue
            blobs.append(Defect(BLOCK_CLASS, area, self.blocks.bbox(x, y, w, h), float(peaks[k])))
        self.last_below_min_area = small
        return blobs

    def defect_pixels(self, pixel_scores: np.ndarray) -> np.ndarray:
        """(height, width) bool grid of the segmenter's defect pixels: at or above pixel_threshold, outside the
        ignore regions; what blobs are made of. A copy, for review and labels (the hot path never calls it)."""
        return self._pixel_hits(pixel_scores).copy()

    def _pixel_hits(self, pixel_scores: np.ndarray) -> np.ndarray:
        grid = self.pixels
        if grid is None:
            raise ValueError("pixel scores given, but the Decider was built without a segmenter")
        expected = (len(self.classes), grid.grid_h, grid.grid_w)
        if pixel_scores.shape != expected:
            raise ValueError(f"pixel scores {pixel_scores.shape}, expected {expected}")
        prob, hit = self._prob, self._hit
        np.subtract(1.0, pixel_scores[0], out=prob)  # P(any defect) = 1 - P(background)
        np.greater_equal(prob, self.cfg.pixel_threshold, out=hit)
        hit &= self._pixel_keep
        return hit

    def _pixel_blobs(self, pixel_scores: np.ndarray) -> list[Defect]:
        hit = self._pixel_hits(pixel_scores)  # checks the shape, and that there is a segmenter grid
        grid = self.pixels
        assert grid is not None
        prob, labels = self._prob, self._labels
        if not hit.any():
            self.last_below_min_area = 0
            return []
        n, _, stats, _ = cv2.connectedComponentsWithStats(hit.view(np.uint8), labels, connectivity=8, ltype=cv2.CV_32S)
        # Mean probability of each defect class over each blob, all blobs at once: one bincount per class over
        # the defect pixels only (cost follows the defect area, not the frame's).
        where = np.flatnonzero(hit)
        blob_of = labels.ravel()[where]
        sums = np.stack(
            [
                np.bincount(blob_of, weights=pixel_scores[c].ravel()[where], minlength=n)
                for c in range(1, len(self.classes))
            ]
        )
        cls_index = 1 + np.argmax(sums[:, 1:], axis=0)  # summing suffices: every class shares the blob's size
        cells = stats[1:, cv2.CC_STAT_AREA]
        areas = np.rint(cells * grid.cell_area).astype(np.int64)
        passing = areas >= self._min_area[cls_index]
        self.last_below_min_area = int((~passing).sum())
        # Only the reported blobs need their peak probability: rank by area first, then slice those few.
        order = np.flatnonzero(passing)
        order = order[np.argsort(-areas[order], kind="stable")][: self.cfg.max_defects_reported]
        blobs = []
        for i in order:
            k = int(i) + 1
            x, y, w, h = (int(v) for v in stats[k, :4])
            region = labels[y : y + h, x : x + w] == k
            peak = float(prob[y : y + h, x : x + w][region].max())
            blobs.append(Defect(self.classes[int(cls_index[i])], int(areas[i]), grid.bbox(x, y, w, h), peak))
        return blobs
