"""Sanity of the networks' outputs: every score must be a probability, checked for every frame on the hot path.

What the models output (inspector.manifest, schema 1): the recognizer's `block_scores` (N, grid_h, grid_w) are
P(defective block) and the segmenter's `pixel_scores` (N, classes, H, W) per-pixel class probabilities, the
softmax (or sigmoid) folded into the exported graph. So a frame whose output holds NaN, +-Inf or a value outside
[0, 1] (give or take FP16 rounding) was not scored by a working model, and the decision must not use it: a NaN
compared with a threshold is false and a score of -5 is below every threshold, so both would *pass* the part.
Such a frame gets a `bad_output` reject instead.

What is detectable per frame, and what is not:
- detectable: NaN or Inf anywhere in a frame's output; any value outside [0, 1], such as an offset or scale
  applied after the final softmax/sigmoid (e.g. -5 added to the scores, an FP16 overflow, a GPU fault writing
  garbage); segmenter class probabilities that do not sum to 1 on average over the frame (a probability map
  scaled or shifted while staying inside [0, 1]).
- not detectable: anything that happens before the final softmax/sigmoid. Shifted or scaled logits, drifted or
  wrong weights, a wrong normalisation, a camera image unlike the training images: the output is still a valid
  probability, only a wrong one. The recognizer outputs only P(defect) per block (no complementary class), so it
  has no sum to check either. Those faults show as a changed reject rate (the InspectorHighRejectRate alert) and
  are found by validation on labelled images (`inspector tune`, the archive's review), not per frame.

Cost per batch: one min and one max reduction per frame over each output, for the segmenter also one sum (its
mean class sum must be 1), into (n,) scratch preallocated (grown to the largest batch seen, then never again):
nothing is allocated per frame. Only a bad frame's `describe` (counting what is wrong) allocates.
"""

from __future__ import annotations

import numpy as np

# Scores are probabilities; FP16 engines may round a little past the ends.
SCORE_TOLERANCE = 1e-3
# A softmax's class probabilities sum to 1 at every pixel; FP16 rounding over a handful of classes stays well inside.
SUM_TOLERANCE = 1e-2


class OutputGuard:
    """Checks one model output for a whole batch at once: which frames' scores are not probabilities.

    `per_frame`: the output's shape per frame. `class_sums`: the first per-frame axis holds classes whose
    probabilities sum to 1 at every pixel (the segmenter's softmax); the check is on the frame's mean class sum,
    one reduction instead of a per-pixel sum buffer, which still catches a probability map scaled or shifted
    inside [0, 1] (`describe` then looks per pixel). Call from one thread (the inference thread)."""

    def __init__(self, role: str, name: str, per_frame: tuple[int, ...], *, class_sums: bool = False):
        self.role = role
        self.name = name
        self.per_frame = per_frame
        self.class_sums = class_sums
        self._values = int(np.prod(per_frame))
        # A softmax over the classes sums to 1 at each of these pixels.
        self._pixels = self._values // per_frame[0] if class_sums else 0
        self._axes = tuple(range(1, 1 + len(per_frame)))  # every axis but the batch
        self._rows = 0
        self._dtype = np.dtype(np.float32)
        self._grow(1, self._dtype)

    def _grow(self, n: int, dtype: np.dtype) -> None:
        self._rows, self._dtype = n, dtype
        self._lo = np.zeros(n, dtype)
        self._hi = np.zeros(n, dtype)
        self._sum = np.zeros(n, np.float32)  # float32 also for float16 scores: a frame's total overflows float16
        self._ok = np.zeros(n, bool)
        self._tmp = np.zeros(n, bool)
        self._bad = np.zeros(n, bool)

    def check(self, scores: np.ndarray) -> np.ndarray:
        """(n, *per_frame) scores -> (n,) bool, True where a frame's output is not a probability (a view of
        scratch reused by the next call)."""
        n = scores.shape[0]
        if scores.shape[1:] != self.per_frame:
            raise ValueError(
                f"{self.role} output {self.name!r} is {scores.shape[1:]} per frame, expected {self.per_frame}"
            )
        if n > self._rows or scores.dtype != self._dtype:
            self._grow(max(n, self._rows), scores.dtype)
        lo, hi, ok, tmp = self._lo[:n], self._hi[:n], self._ok[:n], self._tmp[:n]
        # One contiguous row per frame: reductions over the last axis are the fast ones (half the time of the
        # same reduction over several axes). Backends return contiguous outputs, so this is a view.
        rows = scores.reshape(n, self._values) if scores.flags.c_contiguous else scores
        axis = 1 if rows is not scores else self._axes
        # NaN propagates through min, max and sum and then fails every comparison; +-Inf is out of range.
        np.min(rows, axis=axis, out=lo)
        np.max(rows, axis=axis, out=hi)
        np.greater_equal(lo, -SCORE_TOLERANCE, out=ok)
        np.less_equal(hi, 1 + SCORE_TOLERANCE, out=tmp)
        ok &= tmp
        if self.class_sums:
            total = self._sum[:n]
            np.sum(rows, axis=axis, dtype=np.float32, out=total)
            total /= self._pixels  # the mean class sum per pixel
            np.greater_equal(total, 1 - SUM_TOLERANCE, out=tmp)
            ok &= tmp
            np.less_equal(total, 1 + SUM_TOLERANCE, out=tmp)
            ok &= tmp
        bad = self._bad[:n]
        np.logical_not(ok, out=bad)
        return bad

    def describe(self, scores: np.ndarray) -> str:
        """What is wrong with one frame's output (per_frame shaped), in words, e.g. "segmenter output
        'pixel_scores': 8192 NaN values (of 8192)". Allocates: call it for bad frames only."""
        return f"{self.role} output {self.name!r}: {describe_scores(scores, self.class_sums)}"


def describe_scores(scores: np.ndarray, class_sums: bool = False) -> str:
    """What is not a probability in `scores`: NaN, +-Inf, values below 0 or above 1, and with `class_sums`
    (axis 0 = classes) pixels whose class probabilities do not sum to 1. "probabilities" when nothing is wrong."""
    x = np.asarray(scores, np.float32)
    nan = int(np.count_nonzero(np.isnan(x)))
    pos = int(np.count_nonzero(np.isposinf(x)))
    neg = int(np.count_nonzero(np.isneginf(x)))
    finite = x[np.isfinite(x)]
    below = finite[finite < -SCORE_TOLERANCE]
    above = finite[finite > 1 + SCORE_TOLERANCE]
    parts = []
    if nan:
        parts.append(f"{nan} NaN values")
    if pos:
        parts.append(f"{pos} +Inf values")
    if neg:
        parts.append(f"{neg} -Inf values")
    if below.size:
        parts.append(f"{below.size} values below 0 (lowest {float(below.min()):.4g})")
    if above.size:
        parts.append(f"{above.size} values above 1 (highest {float(above.max()):.4g})")
    if parts:
        return f"{', '.join(parts)} (of {x.size})"
    if class_sums and x.ndim >= 2:
        sums = x.sum(axis=0)
        off = np.abs(sums - 1) > SUM_TOLERANCE
        if off.any():
            return (
                f"class probabilities sum to {float(sums.min()):.4g}..{float(sums.max()):.4g} instead of 1 "
                f"at {int(off.sum())} of {off.size} pixels"
            )
    return "probabilities"
