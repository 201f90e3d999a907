"""How fast this pipeline can inspect: measured once at warm-up, then tracked batch by batch on the hot path.

`measure()` runs, after the models' warm-up, a few timed batches of the inference thread's own work on a blank
frame (`runtime.batch_work`: the recognizer's preprocessing of every row, the recognizer, the batch screen, and
the segmenter when it sees every frame): the median time of a full batch gives `Capacity.fps`, the frames per
second the pipeline can inspect with these models, this backend and this batch size. A gated segmenter is left
out of that figure (a blank frame flags nothing, and how many frames a line flags is the line's business) and
timed beside it: `Capacity.fps_all_flagged` is the rate when it fires on every frame. What it costs on the line
shows up in the running estimate. The preprocessing is counted on the inference thread although the daemon does it on
the acquisition thread, in parallel: on a machine whose cores are all busy that is what it costs, elsewhere the
figure is a little low, never high.

`ServiceTime` is the running estimate admission control uses (inspector/pipeline.py, docs/RELIABILITY.md): the
warm-up times per batch size, scaled by a load factor read off the last few decided batches (`predict_s` takes
their 75th percentile: pessimistic, but blind to a stall). Preallocated; nothing is allocated per batch.

`configured_rate()` is the rate the source is set to deliver, where the config says: a simulator's or a replay's
`rate_hz`, a camera's AcquisitionFrameRate (unless it is triggered). None where nobody knows.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from inspector.config import Config

MEASURED_BATCHES = 5  # timed full batches after the warm-up, at least; the median is the figure
MAX_MEASURED = 400  # ... and more, up to this many, while MEASURE_S lasts (start-up waits for it)
# Seconds of full batches (a quarter of it for single frames). With a fast model (the demo recognizer, ~7 ms a
# batch) 15 batches in 0.25 s gave figures 30 % apart from one start to the next on the 2-core test machine (542
# to 723 frames/s), too noisy to tell overload from noise; with a second the figures of consecutive starts came
# within about 10 % (docs/RELIABILITY.md). A slow model is timed `runs` times regardless.
MEASURE_S = 1.0
WINDOW = 16  # decided batches the running estimate looks back on
# predict_s() takes this rank of the window's factors (0 = the smallest): the 75th percentile. Pessimistic enough
# that the frames admitted close to their deadline make it, blind to a few stalls in WINDOW batches, and not so
# pessimistic that on a machine whose batch times vary (a shared one) frames that would make it are shed.
HIGH_RANK = 3 * WINDOW // 4 - 1


@dataclass(frozen=True)
class Capacity:
    """The warm-up measurement: seconds per batch of one frame and of a full batch."""

    batch_size: int
    single_s: float
    batch_s: float
    segmenter_s: float | None = None  # gated mode: a full batch of the segmenter, which runs on flagged frames

    @property
    def fps(self) -> float:
        """Frames per second the pipeline can inspect in full batches (a gated segmenter firing on none)."""
        return self.batch_size / self.batch_s

    @property
    def fps_all_flagged(self) -> float | None:
        """With a gated segmenter, frames per second when it fires on every frame; None in the other modes."""
        return None if self.segmenter_s is None else self.batch_size / (self.batch_s + self.segmenter_s)

    def batch_time_s(self, n: int) -> float:
        """A batch of n frames, by linear interpolation between one frame and a full batch."""
        if self.batch_size <= 1:
            return self.batch_s * max(n, 1)
        return self.single_s + (self.batch_s - self.single_s) * (n - 1) / (self.batch_size - 1)


def measure(
    run_batch: Callable[[int], None],
    batch_size: int,
    runs: int = MEASURED_BATCHES,
    segment: Callable[[int], None] | None = None,
) -> Capacity:
    """Time `run_batch(n)` (the inference thread's work for n frames; runtime.batch_work) for one frame and for
    a full batch: the median of at least `runs` each, more while MEASURE_S lasts (after the models' warm-up).
    `segment(n)`, for a gated segmenter, is timed on a full batch too (3 times at least)."""
    single = _median_s(run_batch, 1, max(3, runs // 2), MEASURE_S / 4)
    full = single if batch_size == 1 else _median_s(run_batch, batch_size, runs, MEASURE_S)
    seg = None if segment is None else _median_s(segment, batch_size, 3, MEASURE_S / 4)
    return Capacity(batch_size=batch_size, single_s=single, batch_s=max(full, single), segmenter_s=seg)


def _median_s(run_batch: Callable[[int], None], n: int, runs: int, seconds: float) -> float:
    # A median over more batches where they are quick: on a shared machine one batch can take twice as long.
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < runs or (len(times) < MAX_MEASURED and time.perf_counter() < end):
        t0 = time.perf_counter()
        run_batch(n)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def configured_rate(config: Config) -> float | None:
    """Frames per second the source is configured to deliver, or None when not known from the config."""
    src = config.source
    if src.kind in ("synthetic", "folder"):
        rate: float | None = getattr(src, "rate_hz", None)
        return rate  # None: paced by the pipeline, so it cannot outrun it
    features = {f.name: f.value for f in getattr(src, "features", [])}
    if str(features.get("TriggerMode", "Off")).lower() in ("on", "true", "1"):
        return None  # a hardware trigger sets the pace: the line's speed, not a config value
    value = features.get("AcquisitionFrameRate")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class ServiceTime:
    """Running, pessimistic estimate of how long a batch of n frames takes to decide. Inference thread only.

    A batch's time is its warm-up time for that size times a load factor; the factor is read off the last WINDOW
    decided batches (observed / warm-up time): their median is the typical factor, their 75th percentile the
    pessimistic one. A stall (one batch ten times slower) is thereby ignored instead of shutting admission for a
    long while, as it would through a mean; a quarter of the batches slower means the machine is, and counts."""

    def __init__(self, capacity: Capacity):
        self.capacity = capacity
        # A gated segmenter's cost is per flagged frame: the base counts it for every frame (its warm-up time per
        # frame), so that the factor is the share flagged times the machine's speed, alike for every batch size.
        per_frame = (capacity.segmenter_s or 0.0) / capacity.batch_size
        self._base = [capacity.batch_time_s(n) + n * per_frame for n in range(capacity.batch_size + 1)]
        self._base[0] = self._base[1]
        self._window = np.ones(WINDOW)  # factors of the last WINDOW batches; 1.0 = as at warm-up
        self._sorted = np.ones(WINDOW)
        self._next = 0
        self.factor = 1.0  # median of the window
        self.high = 1.0  # 75th percentile of the window
        self.batches = 0

    def observe(self, n: int, seconds: float) -> None:
        """A batch of n frames took `seconds` from admission to its last verdict."""
        self._window[self._next] = seconds / self._base[min(n, len(self._base) - 1)]
        self._next = (self._next + 1) % WINDOW
        np.copyto(self._sorted, self._window)
        self._sorted.sort()  # in place: nothing allocated
        self.factor = float(self._sorted[WINDOW // 2])
        self.high = float(self._sorted[HIGH_RANK])
        self.batches += 1

    def mean_s(self, n: int) -> float:
        """A typical batch of n frames now."""
        return self._base[min(n, len(self._base) - 1)] * self.factor

    def predict_s(self, n: int) -> float:
        """What a batch of n frames should not exceed (barring a stall no recent batch had)."""
        return self._base[min(n, len(self._base) - 1)] * self.high
