"""Engine health: too many frames with bad network outputs or failed inference, and the engine is unhealthy.

A single bad frame is that frame's problem: it gets a `bad_output` (or `error`) reject and inspection goes on.
`health.max_faulty_frames` such frames within `health.window_s` seconds (a sliding window, docs/CONFIG.md) say
the engine itself is broken (a corrupt or wrongly built model, a GPU fault, an FP16 engine that overflows on
this line's images). From then on:

- every frame is a reject with the reason of the fault that tipped it (`bad_output` or `error`, never a pass,
  whatever `pipeline.failsafe_result` says) and is no longer run through the models;
- the listener (the daemon) publishes an `alarm` event, sets `inspector_engine_healthy` to 0 and logs once;
- the systemd watchdog is no longer pinged (service.Watchdog's `healthy`), so systemd restarts the service.

Recovery: unhealthy is sticky until the process restarts (a reload does not clear it). A restart is what loads
the models afresh and runs start-up's checks on them again (runtime.build: a blank frame's outputs must be
probabilities); a model that fails only on real frames goes unhealthy again, and systemd's start limit
(StartLimitBurst) ends the loop with the unit failed and the InspectorDown alert firing. Without a systemd
watchdog nothing restarts it: the daemon stays up, rejecting every frame, with the alarm raised.

Counting costs one float store per faulty frame in a preallocated ring; nothing is done for a good frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from inspector.config import HealthConfig
from inspector.frames import Reason

FAULT_REASONS = (Reason.BAD_OUTPUT, Reason.ERROR)


@dataclass(frozen=True)
class Alarm:
    """Why the engine became unhealthy: what the `alarm` event carries."""

    reason: Reason  # the fault that tipped it: bad_output or error
    faulty_frames: int  # within the window
    window_s: float
    totals: dict[str, int]  # faulty frames by reason since the start
    detail: str  # the last fault, in words
    t_ns: int  # wall time it became unhealthy

    def text(self) -> str:
        return (
            f"engine unhealthy: {self.faulty_frames} faulty frames within {self.window_s:g} s "
            f"(last: {self.reason.value}, {self.detail})"
        )


class EngineHealth:
    """Counts faulty frames in a sliding window; the inference thread calls `fault`, others read `unhealthy`."""

    def __init__(self, listener: Callable[[Alarm], None] | None = None):
        self.listener = listener  # called once, on the inference thread, when the engine becomes unhealthy
        self.unhealthy = False
        self.alarm: Alarm | None = None
        self.totals = {r.value: 0 for r in FAULT_REASONS}
        self._times = np.zeros(0, np.float64)  # monotonic times of the last max_faulty_frames faults, a ring
        self._next = 0
        self._filled = 0

    def fault(self, cfg: HealthConfig, reason: Reason, frames: int, detail: str) -> bool:
        """`frames` frames had this fault just now. Returns True when this made the engine unhealthy."""
        self.totals[reason.value] += frames
        if self.unhealthy or frames <= 0:
            return False
        n = cfg.max_faulty_frames
        if self._times.shape[0] != n:  # first fault, or a reload changed the setting: count afresh
            self._times = np.zeros(n, np.float64)
            self._next = self._filled = 0
        now = time.monotonic()
        for _ in range(min(frames, n)):
            self._times[self._next] = now
            self._next = (self._next + 1) % n
        self._filled = min(n, self._filled + frames)
        # The oldest of the last n faults is where the next one will be written.
        if self._filled < n or now - self._times[self._next] > cfg.window_s:
            return False
        self.unhealthy = True
        self.alarm = Alarm(reason, n, cfg.window_s, dict(self.totals), detail, time.time_ns())
        if self.listener is not None:
            self.listener(self.alarm)
        return True
