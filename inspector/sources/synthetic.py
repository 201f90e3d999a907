"""Synthetic line: a simulated camera showing rendered parts, each with its ground truth (live accuracy).

`pool_size` parts are rendered by `inspector.synth` at open() (rendering takes milliseconds per part, too
slow for the acquisition thread at high rates) and then shown in a cycle at rate_hz. The pool is one
contiguous array; grab() copies one part into the ring slot it is given, which is the frame's only copy.
The same seed renders the same pool in the same order.
"""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np

from inspector.config import SyntheticSourceConfig
from inspector.frames import CHANNELS, GroundTruth
from inspector.sources.base import Grab, SourceError, SourceEvents
from inspector.sources.pacing import Pacer
from inspector.synth import random_part

log = logging.getLogger(__name__)

MAX_POOL_BYTES = 2 << 30  # pre-rendered parts are held in memory; refuse a pool that would not fit sensibly


class SyntheticSource:
    def __init__(self, cfg: SyntheticSourceConfig, events: SourceEvents):
        self.cfg = cfg
        self.events = events
        self.shape = (cfg.height, cfg.width, CHANNELS[cfg.pixel_format])
        self._pool: np.ndarray | None = None
        self._truths: list[GroundTruth] = []
        self._pacer = Pacer(cfg.rate_hz)
        self._next_id = 0

    def open(self) -> None:
        cfg = self.cfg
        nbytes = cfg.pool_size * int(np.prod(self.shape))
        if nbytes > MAX_POOL_BYTES:
            raise SourceError(
                f"source.pool_size {cfg.pool_size} at {cfg.width}x{cfg.height} {cfg.pixel_format} needs "
                f"{nbytes / 2**30:.1f} GiB; lower pool_size (limit {MAX_POOL_BYTES / 2**30:.0f} GiB)"
            )
        t0 = time.perf_counter()
        rng = np.random.default_rng(cfg.seed)
        pool = np.empty((cfg.pool_size, *self.shape), np.uint8)
        truths = []
        for i in range(cfg.pool_size):
            try:
                image, _, truth = random_part(
                    rng,
                    cfg.height,
                    cfg.width,
                    defect_probability=cfg.defect_probability,
                    small_fraction=cfg.small_defect_fraction,
                    kinds=cfg.defect_kinds,
                    channels=self.shape[2],
                )
            except ValueError as exc:
                raise SourceError(f"synthetic source: {exc}") from None
            if cfg.pixel_format == "bgr8":
                cv2.cvtColor(image, cv2.COLOR_RGB2BGR, dst=pool[i])  # the renderer draws RGB
            else:
                pool[i] = image
            truths.append(truth)
        self._pool, self._truths = pool, truths
        defective = sum(t.defective for t in truths)
        log.info(
            "synthetic line: %d parts (%d defective) rendered at %dx%d %s in %.1f s",
            cfg.pool_size,
            defective,
            cfg.width,
            cfg.height,
            cfg.pixel_format,
            time.perf_counter() - t0,
        )

    def start(self) -> None:
        if self._pool is None:
            raise SourceError("synthetic source: start() before open()")
        self._pacer.start(self._next_id)  # frame ids continue across stop/start, like a camera's counter
        self.events.camera_state(True, f"synthetic line, {self.cfg.pool_size} parts at {self.cfg.rate_hz or 'max'} Hz")

    def grab(self, out: np.ndarray, timeout_s: float) -> Grab | None:
        pool = self._pool
        if pool is None:
            raise SourceError("synthetic source: grab() on a closed source")
        if out.shape != self.shape:
            raise SourceError(f"synthetic source: slot is {out.shape}, the source delivers {self.shape}")
        paced = self._pacer.wait(timeout_s)
        if paced is None:
            return None
        frame_id, lost = paced
        self._next_id = frame_id + 1
        index = frame_id % len(pool)  # the part the line shows at this point of its cycle
        np.copyto(out, pool[index])
        return Grab(
            camera_frame_id=frame_id,
            height=self.shape[0],
            width=self.shape[1],
            truth=self._truths[index],
            camera_drops_before=lost,
        )

    def stop(self) -> None:
        """Nothing runs between grabs: stopping only means no grab() follows until start()."""

    def close(self) -> None:
        self._pool = None
        self._truths = []
