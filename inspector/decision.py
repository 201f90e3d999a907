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
from inspector.outputs import OutputGuard
from inspector.preprocess import placed_size, valid_grid

BLOCK_CLASS = "defect"  # class of blobs made from recognizer blocks (no segmenter output)
PIXEL_IGNORE_FRACTION = 0.5  # a segmenter pixel is ignored when at least this much of it is ignored
BLOCK_IGNORE_FRACTION = 0.999  # a block is ignored only when (all but rounding of) it is ignored
NO_DEFECTS: tuple[Defect, ...] = ()

Decision = tuple[Result, Reason, tuple[Defect, ...], float]  # result, reason, blobs largest first, top block score


@dataclass(frozen=True)
class GridMap:
    """A network output grid laid over the frame: `cell_h` x `cell_w` frame pixels per grid cell.

    `valid_h` x `valid_w` leading cells hold frame pixels; for a frame squashed to the input that is the whole
    grid, for a frame placed at the input's top-left (`fit: place`) the cells right of and below it see only the
    zero border and are never scored.
    """

    grid_h: int
    grid_w: int
    frame_h: int
    frame_w: int
    cell_h: float
    cell_w: float
    valid_h: int = -1  # -1: the whole grid
    valid_w: int = -1
    # Where grid line i falls in frame pixels, as box starts and ends (bbox() is a lookup, not arithmetic).
    _x0: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _x1: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _y0: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _y1: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.valid_h < 0:
            object.__setattr__(self, "valid_h", self.grid_h)
        if self.valid_w < 0:
            object.__setattr__(self, "valid_w", self.grid_w)
        fw, fh = self.frame_w, self.frame_h
        xs, ys = range(self.grid_w + 1), range(self.grid_h + 1)
        object.__setattr__(self, "_x0", tuple(min(fw - 1, math.floor(i * self.cell_w)) for i in xs))
        object.__setattr__(self, "_x1", tuple(min(fw, math.ceil(i * self.cell_w)) for i in xs))
        object.__setattr__(self, "_y0", tuple(min(fh - 1, math.floor(i * self.cell_h)) for i in ys))
        object.__setattr__(self, "_y1", tuple(min(fh, math.ceil(i * self.cell_h)) for i in ys))

    @classmethod
    def for_input(cls, frame_size: tuple[int, int], input_size: tuple[int, int], cell: int = 1) -> GridMap:
        """The grid of a network with input (height, width) that the frame is squashed into, whose outputs have
        one cell per `cell` input pixels."""
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

    @classmethod
    def for_placed(
        cls, frame_size: tuple[int, int], placed: tuple[int, int], input_size: tuple[int, int], cell: int = 1
    ) -> GridMap:
        """The grid of a network whose input holds the frame resized to `placed` (height, width) at its top-left
        (`inspector.preprocess.place_image`): frame pixels per cell follow the placed scale, and only the cells
        over the placed frame are valid (`inspector.preprocess.valid_grid`)."""
        frame_h, frame_w = frame_size
        valid_h, valid_w = valid_grid(placed, cell)
        return cls(
            input_size[0] // cell,
            input_size[1] // cell,
            frame_h,
            frame_w,
            cell * frame_h / placed[0],
            cell * frame_w / placed[1],
            valid_h,
            valid_w,
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

    def valid(self) -> np.ndarray:
        """Grid bool mask of the cells that hold frame pixels."""
        mask = np.zeros((self.grid_h, self.grid_w), bool)
        mask[: self.valid_h, : self.valid_w] = True
        return mask

    def covered(self, frame_mask: np.ndarray, min_fraction: float) -> np.ndarray:
        """Frame-sized bool mask -> grid bool mask: valid cells of which at least `min_fraction` is covered."""
        vh, vw = self.valid_h, self.valid_w
        fraction = np.zeros((vh, vw), np.float32)
        # The grid may stop short of the frame's edge when the input is not a multiple of the cell.
        used_h = min(self.frame_h, round(vh * self.cell_h))
        used_w = min(self.frame_w, round(vw * self.cell_w))
        src = frame_mask[:used_h, :used_w].astype(np.float32)
        cv2.resize(src, (vw, vh), dst=fraction, interpolation=cv2.INTER_AREA)
        out = np.zeros((self.grid_h, self.grid_w), bool)
        out[:vh, :vw] = fraction >= min_fraction
        return out


def grid_for(manifest: ModelManifest, frame_size: tuple[int, int], cell: int = 1) -> GridMap:
    """How this model's output grid (one cell per `cell` input pixels) lies over a frame of this size."""
    input_size = (manifest.input.height, manifest.input.width)
    pre = manifest.preprocessing
    if pre.fit == "place" and pre.scale is not None:
        return GridMap.for_placed(frame_size, placed_size(frame_size, pre.scale, input_size), input_size, cell)
    return GridMap.for_input(frame_size, input_size, cell)


def rasterize_ignore(
    cfg: DecisionConfig, frame_size: tuple[int, int], mask: np.ndarray | None, *, strict: bool = True
) -> np.ndarray | None:
    """Polygons from the config plus the mask image -> one frame-sized bool mask (None when nothing is ignored).

    `strict` (the configured frame size): a polygon entirely outside the frame is an error. Frames of another
    size (a replay of mixed sizes) ignore what falls on them, and the mask image applies only to its own size."""
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
        if strict and not one.any():
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


@dataclass(eq=False)
class Geometry:
    """Everything about a decision that depends on the frame's size: both grids over the frame and the cells
    that count (valid, and not ignored). Made once per frame size."""

    blocks: GridMap
    pixels: GridMap | None
    block_keep: np.ndarray  # (grid_h, grid_w) bool
    pixel_keep: np.ndarray | None
    ignored_blocks: int  # blocks that do not count: ignored, or over a placed frame's zero border


class Decider:
    """Turns one frame's recognizer block scores (and, when the segmenter ran, its pixel scores) into a verdict.

    Construct once per config/model set (a reload builds a new one); `screen` and `decide` are called from the
    inference thread only. Scratch arrays for both grids are allocated here, and the geometry of each frame size
    at its first frame (the configured size: here); per frame only the connected-component statistics and the
    (few) reported blobs allocate.
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
        if segmenter is not None and segmenter.task != "segmenter":
            raise ValueError("the segmenter manifest is not a segmenter's")
        self.recognizer, self.segmenter = recognizer, segmenter
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
        self._ignore_mask = ignore_mask
        self._geometries: dict[tuple[int, int], Geometry] = {}
        self.geometry0 = self._make_geometry(frame_size, strict=True)  # the configured size; checks the regions
        self._geometries[frame_size] = self.geometry0

        gh, gw = self.geometry0.blocks.grid_h, self.geometry0.blocks.grid_w
        if (gh, gw) != recognizer.grid:
            raise ValueError(f"recognizer grid {recognizer.grid} disagrees with its input and block size")
        self._block_hit = np.zeros((gh, gw), bool)
        self._block_labels = np.zeros((gh, gw), np.int32)
        self._block_peaks = np.zeros(gh * gw + 1, np.float32)  # per blob label; at most one blob per block
        if self.geometry0.pixels is not None:
            sh, sw = self.geometry0.pixels.grid_h, self.geometry0.pixels.grid_w
            self._prob = np.zeros((sh, sw), np.float32)
            self._hit = np.zeros((sh, sw), bool)
            self._labels = np.zeros((sh, sw), np.int32)
        self.last_below_min_area = 0
        self._batch_rows = 0  # batch scratch for screen(), grown to the largest batch seen (then never again)
        self._batch_hit = np.zeros((0, gh, gw), bool)
        self._batch_keep = np.zeros((0, gh, gw), bool)
        self._batch_flagged = np.zeros(0, bool)
        self._batch_score = np.zeros(0, np.float32)
        # Whether each frame's scores are probabilities at all (inspector.outputs): checked before they are used.
        self.block_guard = OutputGuard("recognizer", "block_scores", (gh, gw))
        self.pixel_guard: OutputGuard | None = None
        if self.geometry0.pixels is not None:
            pixels = self.geometry0.pixels
            per_frame = (len(self.classes), pixels.grid_h, pixels.grid_w)
            self.pixel_guard = OutputGuard("segmenter", "pixel_scores", per_frame, class_sums=True)

    # The configured frame size's geometry, as attributes (tools and tests read them).
    @property
    def blocks(self) -> GridMap:
        return self.geometry0.blocks

    @property
    def pixels(self) -> GridMap | None:
        return self.geometry0.pixels

    @property
    def ignored_blocks(self) -> int:
        return self.geometry0.ignored_blocks

    def geometry(self, frame_size: tuple[int, int]) -> Geometry:
        """The geometry for frames of this (height, width); made at the first frame of a new size."""
        geometry = self._geometries.get(frame_size)
        if geometry is None:
            geometry = self._geometries[frame_size] = self._make_geometry(frame_size, strict=False)
        return geometry

    def _make_geometry(self, frame_size: tuple[int, int], *, strict: bool) -> Geometry:
        mask = self._ignore_mask
        if mask is not None and mask.shape[:2] != frame_size:
            if strict:
                raise ValueError(
                    f"decision.ignore_regions.mask is {mask.shape[1]}x{mask.shape[0]}, the frame is "
                    f"{frame_size[1]}x{frame_size[0]}"
                )
            raise ValueError(
                f"a {frame_size[1]}x{frame_size[0]} frame, but decision.ignore_regions.mask is "
                f"{mask.shape[1]}x{mask.shape[0]}: an ignore mask only applies to frames of its size"
            )
        ignored = rasterize_ignore(self.cfg, frame_size, mask, strict=strict)
        blocks = grid_for(self.recognizer, frame_size, self.recognizer.block_size or 1)
        block_keep = blocks.valid()
        if ignored is not None:
            block_keep &= ~blocks.covered(ignored, BLOCK_IGNORE_FRACTION)
        pixels, pixel_keep = None, None
        if self.segmenter is not None:
            pixels = grid_for(self.segmenter, frame_size)
            pixel_keep = pixels.valid()
            if ignored is not None:
                pixel_keep &= ~pixels.covered(ignored, PIXEL_IGNORE_FRACTION)
        return Geometry(blocks, pixels, block_keep, pixel_keep, int((~block_keep).sum()))

    # ------------------------------------------------------------------------------------ recognizer

    def _block_scores_checked(self, block_scores: np.ndarray) -> np.ndarray:
        if block_scores.shape != self._block_hit.shape:
            raise ValueError(f"block scores {block_scores.shape}, expected the grid {self._block_hit.shape}")
        return block_scores

    def flagged(self, block_scores: np.ndarray, geometry: Geometry | None = None) -> bool:
        """Whether any block that counts scores at or above block_threshold (gates the segmenter)."""
        keep = (geometry or self.geometry0).block_keep
        hit = self._block_hit
        np.greater_equal(self._block_scores_checked(block_scores), self.cfg.block_threshold, out=hit)
        hit &= keep
        return bool(hit.any())

    def max_block_score(self, block_scores: np.ndarray, geometry: Geometry | None = None) -> float:
        """Highest score of the blocks that count (0 when none does)."""
        keep = (geometry or self.geometry0).block_keep
        scores = self._block_scores_checked(block_scores)
        return float(np.max(scores, where=keep, initial=0.0))

    def screen(
        self, block_scores: np.ndarray, geometries: list[Geometry] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A batch's block scores (n, grid_h, grid_w) -> (flagged (n,) bool, highest score of the blocks that
        count (n,) float32): `flagged` and `max_block_score` for every frame at once. `geometries`: one per frame
        when the batch holds frames of another size than the configured one. The arrays are views of scratch
        reused by the next call."""
        n = block_scores.shape[0]
        if block_scores.shape[1:] != self._block_hit.shape:
            raise ValueError(f"block scores {block_scores.shape[1:]}, expected the grid {self._block_hit.shape}")
        if n > self._batch_rows:
            gh, gw = self._block_hit.shape
            self._batch_hit = np.zeros((n, gh, gw), bool)
            self._batch_keep = np.zeros((n, gh, gw), bool)
            self._batch_flagged = np.zeros(n, bool)
            self._batch_score = np.zeros(n, np.float32)
            self._batch_rows = n
        hit, flagged, score = self._batch_hit[:n], self._batch_flagged[:n], self._batch_score[:n]
        np.greater_equal(block_scores, self.cfg.block_threshold, out=hit)
        keep: np.ndarray | None = None
        if geometries is not None:
            keep = self._batch_keep[:n]
            for i, geometry in enumerate(geometries):
                keep[i] = geometry.block_keep
        elif self.geometry0.ignored_blocks:
            keep = self.geometry0.block_keep
        if keep is not None:
            hit &= keep
            np.max(block_scores, axis=(1, 2), where=keep, initial=0.0, out=score)
        else:
            np.max(block_scores, axis=(1, 2), initial=0.0, out=score)
        np.any(hit, axis=(1, 2), out=flagged)
        return flagged, score

    # -------------------------------------------------------------------------------------- decision

    def decide(
        self, block_scores: np.ndarray, pixel_scores: np.ndarray | None, frame_size: tuple[int, int] | None = None
    ) -> Decision:
        """-> (result, reason, defects largest first, highest score of the blocks that count).

        block_scores: (grid_h, grid_w) P(defective block). pixel_scores: (classes, height, width) per-pixel class
        probabilities from the segmenter, or None when it did not run (segmenter_mode never, or gated and the
        frame was not flagged): then blobs are groups of defective blocks. frame_size: the frame's (height,
        width), if not the configured one.
        """
        geometry = self.geometry0 if frame_size is None else self.geometry(frame_size)
        score = self.max_block_score(block_scores, geometry)
        if pixel_scores is None:
            blobs = self._block_blobs(block_scores, geometry)
        else:
            blobs = self._pixel_blobs(pixel_scores, geometry)
        if not blobs:
            return "pass", Reason.OK, NO_DEFECTS, score
        blobs.sort(key=lambda d: d.area_px, reverse=True)
        return "reject", Reason.DEFECT, tuple(blobs[: self.cfg.max_defects_reported]), score

    def decide_screened(
        self, i: int, block_scores: np.ndarray, pixel_scores: np.ndarray | None, geometry: Geometry | None = None
    ) -> Decision:
        """`decide` for frame i of the batch last given to `screen` (block_scores is that frame's row, geometry
        the one screen had for it): its threshold mask and top score are reused instead of computed again."""
        score = float(self._batch_score[i])
        if pixel_scores is not None:
            blobs = self._pixel_blobs(pixel_scores, geometry or self.geometry0)
        elif self._batch_flagged[i]:
            blobs = self._blobs_of(self._batch_hit[i], block_scores, geometry or self.geometry0)
        else:
            self.last_below_min_area = 0
            return "pass", Reason.OK, NO_DEFECTS, score
        if not blobs:
            return "pass", Reason.OK, NO_DEFECTS, score
        blobs.sort(key=lambda d: d.area_px, reverse=True)
        return "reject", Reason.DEFECT, tuple(blobs[: self.cfg.max_defects_reported]), score

    def _block_blobs(self, block_scores: np.ndarray, geometry: Geometry) -> list[Defect]:
        if not self.flagged(block_scores, geometry):  # fills self._block_hit
            self.last_below_min_area = 0
            return []
        return self._blobs_of(self._block_hit, block_scores, geometry)

    def _blobs_of(self, hit: np.ndarray, block_scores: np.ndarray, geometry: Geometry) -> list[Defect]:
        """Blobs of flagged blocks (`hit`, the grid's bool mask), with their area, box and peak score."""
        labels, peaks, grid = self._block_labels, self._block_peaks, geometry.blocks
        n, _, stats, _ = cv2.connectedComponentsWithStats(hit.view(np.uint8), labels, connectivity=8, ltype=cv2.CV_32S)
        # Every blob's peak score in one call (label 0, the background, collects the rest).
        peaks[:n] = 0.0
        np.maximum.at(peaks, labels.ravel(), block_scores.ravel())
        blobs = []
        small = 0
        for k, (x, y, w, h, cells) in enumerate(stats.tolist()):
            if k == 0:
                continue
            area = grid.area(cells)
            if area < self._block_min_area:
                small += 1
                continue
            blobs.append(Defect(BLOCK_CLASS, area, grid.bbox(x, y, w, h), float(peaks[k])))
        self.last_below_min_area = small
        return blobs

    def defect_pixels(self, pixel_scores: np.ndarray, frame_size: tuple[int, int] | None = None) -> np.ndarray:
        """(height, width) bool grid of the segmenter's defect pixels: at or above pixel_threshold, in the cells
        that count; what blobs are made of. A copy, for review and labels (the hot path never calls it)."""
        geometry = self.geometry0 if frame_size is None else self.geometry(frame_size)
        hits: np.ndarray = self._pixel_hits(pixel_scores, geometry).copy()
        return hits

    def _pixel_hits(self, pixel_scores: np.ndarray, geometry: Geometry) -> np.ndarray:
        grid, keep = geometry.pixels, geometry.pixel_keep
        if grid is None or keep is None:
            raise ValueError("pixel scores given, but the Decider was built without a segmenter")
        expected = (len(self.classes), grid.grid_h, grid.grid_w)
        if pixel_scores.shape != expected:
            raise ValueError(f"pixel scores {pixel_scores.shape}, expected {expected}")
        prob, hit = self._prob, self._hit
        np.subtract(1.0, pixel_scores[0], out=prob)  # P(any defect) = 1 - P(background)
        np.greater_equal(prob, self.cfg.pixel_threshold, out=hit)
        hit &= keep
        return hit

    def _pixel_blobs(self, pixel_scores: np.ndarray, geometry: Geometry) -> list[Defect]:
        hit = self._pixel_hits(pixel_scores, geometry)  # checks the shape, and that there is a segmenter grid
        grid = geometry.pixels
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
