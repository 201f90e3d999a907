"""Evaluation metrics, numpy only (no torch), so the daemon's tools can reuse them.

Image level (one score per image, higher = more likely defective; an image is called defective when its
score is >= the threshold, the same ">=" rule as `DecisionConfig.block_threshold`):

- TPR = TP / (TP + FN) over defective images, TNR = TN / (TN + FP) over defect-free images;
- ACC = (TPR + TNR) / 2 — the paper's definition (balanced accuracy), not (TP + TN) / N;
- AP: area under the precision-recall curve as the step sum over distinct score thresholds,
  AP = sum_k (R_k - R_{k-1}) * P_k (the "average precision" of Pascal VOC after 2010 and of scikit-learn);
  tied scores form one threshold, so the order of tied images never matters;
- AUROC: the probability that a random defective image scores above a random defect-free one, ties counting
  1/2 (the Mann-Whitney U statistic divided by n_pos * n_neg).

Undefined values. A rate whose denominator is empty is NaN, never 0 or 1: TPR is NaN without defective
images, TNR without defect-free ones, and ACC is NaN whenever either is (averaging only the defined one would
report a one-sided number as a balanced accuracy). AP is NaN without defective images; AUROC is NaN unless
both kinds are present. Pixel precision is NaN when nothing is predicted defective, recall when nothing is
truly defective, F1 when either is NaN or both are 0 (then F1 = 0 when there were defect pixels to find),
IoU when prediction and truth are both empty. NaN propagates through mean ± std (`summarize` uses nanmean
and says how many groups were defined).

Pixel level (the defect class: any non-background class, P(defect) = 1 - P(background)): the standard
precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R), IoU = TP / (TP + FP + FN), summed
over all pixels of all images (micro average). `PixelAccumulator` keeps two histograms of P(defect) — one for
defect pixels, one for background pixels — so any number of images is accumulated in constant memory, and the
counts at every threshold on its grid (1/bins) come out exactly: that is what picks the F1-optimal pixel
threshold on the validation split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NAN = float("nan")


def _ratio(num: float, den: float) -> float:
    return num / den if den else NAN


@dataclass(frozen=True)
class Confusion:
    tp: int
    fn: int
    tn: int
    fp: int

    @property
    def tpr(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def tnr(self) -> float:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def acc(self) -> float:
        """The paper's ACC = (TPR + TNR) / 2; NaN if either is undefined."""
        return (self.tpr + self.tnr) / 2  # NaN propagates

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return self.tpr

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if math.isnan(r):
            return NAN  # nothing to find: F1 says nothing
        if math.isnan(p):
            return 0.0  # defects to find, nothing predicted: recall 0, F1 0
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def iou(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)


def confusion(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Confusion:
    """Image-level confusion counts: predicted defective iff score >= threshold."""
    scores, labels = _check(scores, labels)
    pred = scores >= threshold
    return Confusion(
        tp=int(np.sum(pred & labels)),
        fn=int(np.sum(~pred & labels)),
        tn=int(np.sum(~pred & ~labels)),
        fp=int(np.sum(pred & ~labels)),
    )


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores, labels


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a defective > score of a defect-free image), ties 1/2. NaN unless both kinds are present."""
    scores, labels = _check(scores, labels)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return NAN
    # Mid-ranks (average rank of tied scores) give the tie = 1/2 rule exactly.
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mid = first + (counts - 1) / 2.0 + 1.0  # 1-based mid-rank of each distinct value
    ranks[order] = np.repeat(mid, counts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def separation(scores: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    """logit(lowest defective score) - logit(highest defect-free score): > 0 when every defective image ranks
    above every defect-free one, and then how far a threshold can move before the first wrong decision. Scores
    are probabilities, clipped to [eps, 1 - eps] so that saturated scores stay finite. NaN unless both kinds
    are present."""
    scores, labels = _check(scores, labels)
    if not labels.any() or labels.all():
        return NAN
    lo, hi = np.clip([scores[labels].min(), scores[~labels].max()], eps, 1.0 - eps)
    return float(np.log(lo / (1.0 - lo)) - np.log(hi / (1.0 - hi)))


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, precision, recall) at every distinct score (predicted defective: >= t)."""
    scores, labels = _check(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    # The last index of each run of equal scores: all tied images are in or out together.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.array([], int)
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1) - tp
    n_pos = labels.sum()
    precision = tp / (tp + fp)
    recall = tp / n_pos if n_pos else np.full_like(tp, NAN)
    return s[last], precision, recall


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Step-sum AP over distinct thresholds; NaN without defective images."""
    _, labels_b = _check(scores, labels)
    if not labels_b.any():
        return NAN
    _, precision, recall = pr_curve(scores, labels)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold that maximises ACC = (TPR + TNR) / 2 on these (validation) scores.

    Candidates are the cuts between consecutive distinct scores. Among equally good cuts the lowest threshold
    wins (a missed defect costs more on a line than a re-inspected good part), and the threshold is placed
    midway in the gap below the lowest score it calls defective, not on that score, so a defective image
    scoring slightly lower than its validation counterpart is still caught. Needs both kinds of images.
    """
    scores, labels = _check(scores, labels)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        raise ValueError(f"a threshold needs defective and defect-free images (got {n_pos} and {n_neg})")
    thresholds, _, recall = pr_curve(scores, labels)
    # At cut k (defective iff score >= thresholds[k]): TPR = recall[k], FP = images above minus TP.
    order = np.sort(scores)[::-1]
    n_above = np.searchsorted(-order, -thresholds, side="right")
    tp = recall * n_pos
    tnr = 1.0 - (n_above - tp) / n_neg
    acc = (recall + tnr) / 2
    # The last cut calls every image defective (ACC 0.5), as good as calling none defective: no model does worse.
    best = int(np.flatnonzero(acc >= acc.max() - 1e-12)[-1])  # the last = lowest threshold among the best
    lower = thresholds[best + 1] if best + 1 < len(thresholds) else None
    if lower is None:  # every image is called defective: no gap below, the lowest score itself
        return float(thresholds[best])
    return float((thresholds[best] + lower) / 2)


def image_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """TPR, TNR, ACC at `threshold`; AP and AUROC over all thresholds; counts."""
    c = confusion(scores, labels, threshold)
    return {
        "tpr": c.tpr,
        "tnr": c.tnr,
        "acc": c.acc,
        "ap": average_precision(scores, labels),
        "auroc": auroc(scores, labels),
        "defective": c.tp + c.fn,
        "good": c.tn + c.fp,
        "tp": c.tp,
        "fn": c.fn,
        "tn": c.tn,
        "fp": c.fp,
    }


class PixelAccumulator:
    """Pixel confusion counts for every threshold on a 1/bins grid, accumulated image by image.

    `update(prob, truth)` adds one image: `prob` = P(defect) per pixel in [0, 1], `truth` = defect pixels.
    A pixel is predicted defective iff prob >= threshold; thresholds are exact on the grid k / bins and are
    rounded to it otherwise (bin k holds probabilities in [k / bins, (k + 1) / bins)).
    """

    def __init__(self, bins: int = 1000):
        self.bins = bins
        self.positive = np.zeros(bins + 1, np.int64)  # histogram of P(defect) over defect pixels
        self.negative = np.zeros(bins + 1, np.int64)  # ... over background pixels
        self.images = 0

    def _bin(self, prob: np.ndarray) -> np.ndarray:
        # Bin k holds [k/bins, (k+1)/bins); prob 1.0 gets its own top bin so that "threshold 1.0" still works.
        return np.clip(np.floor(prob.astype(np.float64) * self.bins), 0, self.bins).astype(np.int64)

    def update(self, prob: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> None:
        if prob.shape != truth.shape:
            raise ValueError(f"prediction {prob.shape} and truth {truth.shape} differ in shape")
        truth = truth.astype(bool)
        if valid is not None:
            prob, truth = prob[valid], truth[valid]
        b = self._bin(prob)
        self.positive += np.bincount(b[truth], minlength=self.bins + 1)
        self.negative += np.bincount(b[~truth], minlength=self.bins + 1)
        self.images += 1

    def merge(self, other: PixelAccumulator) -> None:
        if other.bins != self.bins:
            raise ValueError("cannot merge accumulators with different bins")
        self.positive += other.positive
        self.negative += other.negative
        self.images += other.images

    def _index(self, threshold: float) -> int:
        return int(np.clip(round(threshold * self.bins), 0, self.bins + 1))

    def confusion(self, threshold: float) -> Confusion:
        k = self._index(threshold)
        tp = int(self.positive[k:].sum())
        fp = int(self.negative[k:].sum())
        return Confusion(tp=tp, fn=int(self.positive.sum()) - tp, tn=int(self.negative.sum()) - fp, fp=fp)

    def metrics(self, threshold: float) -> dict[str, float]:
        c = self.confusion(threshold)
        return {
            "precision": c.precision,
            "recall": c.recall,
            "f1": c.f1,
            "iou": c.iou,
            "defect_pixels": c.tp + c.fn,
            "pixels": c.tp + c.fn + c.tn + c.fp,
            "images": self.images,
        }

    def best_threshold(self, lowest: float = 0.05, highest: float = 0.95) -> float:
        """The grid threshold in [lowest, highest] with the highest F1 (ties: the lowest threshold).

        The range keeps the suggestion away from the extremes, where a threshold on 1000 validation images
        would be fitted to a handful of pixels' rounding rather than to the defects.
        """
        if not self.positive.sum():
            raise ValueError("no defect pixels accumulated: a pixel threshold cannot be chosen")
        ks = np.arange(self._index(lowest), self._index(highest) + 1)
        tp = np.cumsum(self.positive[::-1])[::-1][ks].astype(np.float64)
        fp = np.cumsum(self.negative[::-1])[::-1][ks].astype(np.float64)
        fn = self.positive.sum() - tp
        den = 2 * tp + fp + fn
        f1 = np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)
        return float(ks[int(np.argmax(f1))] / self.bins)  # argmax: the first (lowest) of equal maxima


def summarize(values: list[float]) -> dict[str, float]:
    """mean ± std (sample std, ddof=1; NaN for fewer than 2) over groups, ignoring undefined (NaN) groups, and how
    many were defined."""
    arr = np.asarray(values, dtype=np.float64)
    ok = arr[~np.isnan(arr)]
    return {
        "mean": float(ok.mean()) if ok.size else NAN,
        "std": float(ok.std(ddof=1)) if ok.size > 1 else NAN,  # one group has no spread to report
        "defined": int(ok.size),
        "n": int(arr.size),
    }
