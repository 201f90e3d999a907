"""What every source is: the `Source` Protocol, the `Grab` record it returns, its events and errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from inspector.frames import GroundTruth, TimestampSource


class SourceError(Exception):
    """The source cannot deliver frames (misconfigured, device gone); the message says why."""


class EndOfStream(Exception):
    """A finite source (a folder replay without loop) has no more frames."""


@dataclass(slots=True)
class Grab:
    """What a source tells about the frame it just wrote into the slot."""

    camera_frame_id: int
    height: int
    width: int
    t_device_ns: int | None = None
    timestamp_source: TimestampSource = "host"
    truth: GroundTruth | None = None
    bad_frame: str | None = None  # set when the frame cannot be inspected (wrong size/format)
    camera_drops_before: int = 0  # frames the camera lost just before this one (frame-id gap)
    source_name: str | None = None  # the file a replay read the frame from (a string it keeps); None: a camera


class SourceEvents(Protocol):
    """Callbacks a source uses to report its state; the daemon publishes them and updates metrics.
    Called from the acquisition thread: implementations only enqueue, never block."""

    def camera_state(self, connected: bool, detail: str) -> None: ...


class Source(Protocol):
    """A frame source, constructed as `cls(config, events)` with its config section and a SourceEvents.
    Lifecycle: open() -> start() -> grab()* -> stop() -> close().

    Called from the acquisition thread only (start/stop/close also from the main thread, never concurrently
    with grab). A source writes pixels straight into the slot it is given — that is the frame's only copy.
    """

    def __init__(self, config: Any, events: SourceEvents) -> None: ...

    def open(self) -> None:
        """Connect and configure; raise SourceError with a clear message if that is impossible."""

    def start(self) -> None: ...

    def grab(self, out: np.ndarray, timeout_s: float) -> Grab | None:
        """Wait up to timeout_s for the next frame and write it into `out` (H, W, C uint8, the slot).

        Returns None on timeout (no frame) and raises EndOfStream when a finite source is exhausted.
        Pacing (rate_hz) is the source's job, and so is recovering a lost device: a camera source reports
        the loss through events.camera_state(False, ...), returns None while it reconnects with backoff, and
        reports camera_state(True, ...) when frames flow again. SourceError is for what cannot recover.
        """

    def stop(self) -> None: ...

    def close(self) -> None: ...
