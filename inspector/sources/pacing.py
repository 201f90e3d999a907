"""Frame pacing for simulated cameras (synthetic line, folder replay): a free-running camera's timeline.

Absolute-time pacing: frame k is due at t0 + k / rate_hz, so sleep overshoot and jitter never accumulate into
drift; a late frame is delivered at once and the next one is still due on the original grid.

A real camera keeps producing while nobody fetches, into a small queue of buffers; what does not fit is lost.
The pacer models that: when the consumer falls more than `backlog` frames behind, the oldest overdue frames
are skipped and reported as camera drops (the frame id jumps by the same amount), instead of replaying the
whole stall as a burst that would only measure the simulator.
"""

from __future__ import annotations

import time

DEFAULT_BACKLOG = 8  # frames a camera holds while the host is late (GenicamSourceConfig.num_buffers default)


class Pacer:
    def __init__(self, rate_hz: float | None, backlog: int = DEFAULT_BACKLOG):
        self.rate_hz = rate_hz
        self.backlog = backlog
        self._period_ns = round(1e9 / rate_hz) if rate_hz else 0
        self._t0_ns = 0
        self._k = 0  # frames since start(), including skipped ones
        self._first_id = 0

    def start(self, first_id: int = 0) -> None:
        """Restart the timeline now; the first frame is due immediately and gets id `first_id`."""
        self._t0_ns = time.monotonic_ns()
        self._k = 0
        self._first_id = first_id

    @property
    def next_id(self) -> int:
        """The frame id the next delivered frame will get (if none is lost before it)."""
        return self._first_id + self._k

    def wait(self, timeout_s: float) -> tuple[int, int] | None:
        """Block until the next frame is due -> (frame id, frames lost just before it); None on timeout."""
        lost = 0
        if self._period_ns:
            due = self._t0_ns + self._k * self._period_ns
            now = time.monotonic_ns()
            if due > now:
                if due - now > timeout_s * 1e9:
                    time.sleep(timeout_s)
                    return None
                time.sleep((due - now) / 1e9)
            else:
                overdue = (now - due) // self._period_ns  # frames due after this one, already
                if overdue > self.backlog:
                    lost = int(overdue - self.backlog)
                    self._k += lost
        frame_id = self._first_id + self._k
        self._k += 1
        return frame_id, lost
