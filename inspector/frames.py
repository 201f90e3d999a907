"""Records that flow through the pipeline, and the preallocated ring of frame slots.

A frame leaves the pipeline exactly once, as a Verdict: inspected (pass/reject with reason "defect" or "ok"),
or not inspected, with the reason why (overload, timeout, error, bad_frame, shutdown, bad_output).

The ring owns one contiguous uint8 array of shape (slots, height, width, channels), allocated once. The
acquisition thread writes a frame straight into a free slot (the source's only copy); the inference thread
reads it in place and releases the slot when the frame's verdict is made. No per-frame allocation of pixels.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import numpy as np

CHANNELS = {"mono8": 1, "rgb8": 3, "bgr8": 3}

Result = Literal["pass", "reject"]


class Reason(str, Enum):
    """Why a verdict is what it is. Part of the wire protocol (docs/PROTOCOL.md): add, never rename.

    `inspected`: the models looked at the frame (ok, defect); every other reason is a fail-safe verdict.
    """

    inspected: bool

    OK = "ok"  # inspected, nothing rejecting found
    DEFECT = "defect"  # inspected, at least one blob passed the thresholds
    OVERLOAD = "overload"  # shed at admission (predicted to miss its deadline), or the ring was full on arrival
    TIMEOUT = "timeout"  # admitted, yet not decided within pipeline.deadline_ms (a stall no estimate foresaw)
    ERROR = "error"  # inference or decision raised
    BAD_FRAME = "bad_frame"  # the source delivered something that cannot be inspected (size, format)
    SHUTDOWN = "shutdown"  # in flight at shutdown and not inspected within the stop timeout
    BAD_OUTPUT = "bad_output"  # a network's output was not a probability (NaN, Inf, out of [0, 1]): always a reject

    def __init__(self, value: str) -> None:
        # An attribute, not a property: it is read for every verdict on the publisher thread.
        self.inspected = value in ("ok", "defect")


TimestampSource = Literal["device", "host"]


@dataclass(slots=True, frozen=True)
class GroundTruth:
    defective: bool
    defect_area_px: int = 0
    kind: str | None = None


@dataclass(slots=True, frozen=True)
class Defect:
    """One defect blob, in frame pixel coordinates."""

    cls: str
    area_px: int
    bbox: tuple[int, int, int, int]  # x, y, width, height
    score: float  # the highest defect probability inside the blob

    def to_wire(self) -> dict[str, Any]:
        x, y, w, h = self.bbox
        return {"class": self.cls, "area_px": self.area_px, "bbox": [x, y, w, h], "score": round(self.score, 4)}


@dataclass(slots=True)
class Verdict:
    seq: int
    camera_frame_id: int
    result: Result
    reason: Reason
    t_acquired_ns: int
    t_decided_ns: int
    timestamp_source: TimestampSource = "host"
    t_device_ns: int | None = None
    defects: tuple[Defect, ...] = ()
    recognizer_score: float | None = None  # highest block score; None when not inspected
    segmenter_ran: bool = False
    camera_drops_before: int = 0
    detail: str | None = None  # human-readable explanation (error text, which deadline, ...)
    config_hash: str = ""
    model_hashes: dict[str, str] = field(default_factory=dict)
    truth: GroundTruth | None = None
    source_name: str | None = None  # the replayed file (folder source); None for cameras
    t_acquired_mono_ns: int = 0  # not on the wire: for latency metrics


class FrameRing:
    """Fixed pool of frame slots. Thread-safe: one producer (acquisition) and one consumer (inference)."""

    def __init__(self, slots: int, height: int, width: int, channels: int):
        if slots < 1:
            raise ValueError("a ring needs at least one slot")
        self.pixels = np.zeros((slots, height, width, channels), dtype=np.uint8)
        self._free: list[int] = list(range(slots - 1, -1, -1))
        self._is_free = [True] * slots
        self._lock = threading.Lock()

    @property
    def slots(self) -> int:
        return self.pixels.shape[0]

    def acquire(self) -> int | None:
        """A free slot index, or None when every slot is in use (the caller reports an overload)."""
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
            self._is_free[slot] = False
            return slot

    def release(self, slot: int) -> None:
        with self._lock:
            if self._is_free[slot]:
                raise RuntimeError(f"slot {slot} released twice")
            self._is_free[slot] = True
            self._free.append(slot)

    def release_all(self, slots: list[int]) -> None:
        """release() for several slots under one lock (the inference thread frees a batch at once)."""
        with self._lock:
            for slot in slots:
                if self._is_free[slot]:
                    raise RuntimeError(f"slot {slot} released twice")
                self._is_free[slot] = True
                self._free.append(slot)

    def in_use(self) -> int:
        with self._lock:
            return self.slots - len(self._free)

    def view(self, slot: int) -> np.ndarray:
        """The slot's pixels, (height, width, channels), a view (no copy)."""
        view: np.ndarray = self.pixels[slot]
        return view
