"""GenICam camera source: a GenTL consumer through harvesters, feeding the ring from the acquisition thread.

Fetch strategy (docs/CAMERA.md explains it at length). grab() fetches synchronously on the caller's thread
(the daemon's acquisition thread) with `ImageAcquirer.try_fetch(timeout=..., is_raw=True)`. harvesters'
background thread is never started: it keeps a queue of one buffer and re-queues the oldest one unseen when
the next arrives, so frames would vanish without a trace, and it has no device-lost event. Fetching ourselves,
every buffer is accounted for:

- complete: converted once into the ring slot, then re-queued (in a `finally`, so never read afterwards);
- incomplete: re-queued by harvesters inside the fetch and counted here (INCOMPLETE_BUFFER callback);
- never delivered because no buffer was queued when the camera had a frame: the stream runs in OldestFirst
  mode, so the camera drops the new frame, and the gap in frame ids appears as Grab.camera_drops_before.

Every wait is bounded: harvesters waits in GenTL EventGetData slices of WAIT_SLICE_MS (the GIL is released
while it waits) until the grab's timeout, the fetch timeout or the camera-lost deadline, whichever is first.

Faults: no complete frame for lost_after_ms, or any GenTL/GenApi error while fetching or re-queueing (device
gone, producer failure), is a loss: events.camera_state(False, why) once, the device is torn down, and grab()
returns None while reconnect attempts run with the configured backoff (re-enumerate, re-open the device,
re-check and re-apply every feature, restart acquisition). events.camera_state(True, ...) is sent when the
first frame arrives again (and at the very first frame after start).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from inspector.config import GenicamSourceConfig
from inspector.frames import CHANNELS, TimestampSource
from inspector.sources.base import Grab, SourceError, SourceEvents
from inspector.sources.genicam.convert import CONVERSIONS, SOURCE_FORMATS, Converter, Layout
from inspector.sources.genicam.devices import enumerate_devices, select_device
from inspector.sources.genicam.features import access_mode, apply_features, enum_entries, read_node
from inspector.sources.genicam.gentl import (
    PFNC_NAMES,
    Callback,
    EAccessMode,
    GenApiError,
    GenTLError,
    Harvester,
    ImageAcquirer,
    ParameterKey,
    ParameterSet,
    default_cti,
    quiet_harvesters,
    require,
)

log = logging.getLogger(__name__)

# harvesters waits for a buffer in GenTL EventGetData calls of this length and checks its own timeout between
# them; it bounds how late a timeout (and so loss detection) can be. Idle cost: 1000/WAIT_SLICE_MS wake-ups/s.
WAIT_SLICE_MS = 20


@dataclass
class CameraStats:
    """Counters of one GenicamSource (read by the daemon's metrics and by tools/bench_camera.py)."""

    frames: int = 0  # complete buffers delivered into the ring
    incomplete_buffers: int = 0  # buffers the producer flagged incomplete: re-queued, never delivered
    camera_drops: int = 0  # frames lost camera-side (frame-id gaps), summed
    bad_frames: int = 0  # delivered with Grab.bad_frame set (size/format differs from the ring)
    losses: int = 0  # times the camera was declared lost
    reconnects: int = 0  # successful reconnections
    reconnect_failures: int = 0  # failed reconnect attempts
    convert_ns: int = 0  # time spent converting pixels into the ring (the one copy), summed
    last_error: str = ""  # why the camera was last lost / a reconnect last failed
    connected: bool = False


class GenicamSource:
    """Source for a GenICam camera; constructed as GenicamSource(config, events) like every Source."""

    def __init__(self, cfg: GenicamSourceConfig, events: SourceEvents):
        self.cfg = cfg
        self.events = events
        self.shape = (cfg.height, cfg.width, CHANNELS[cfg.pixel_format])
        self.stats = CameraStats()
        self.device_label = cfg.device or "(the only device)"
        self._ctis: list[str] = []
        self._harvester: Harvester | None = None
        self._ia: ImageAcquirer | None = None
        self._ia_stack: contextlib.ExitStack | None = None
        self._converter: Converter | None = None
        self._layout: Layout | None = None
        self._buffer_pool: list[bytes] = []  # GenTL buffers, owned here and reused across reconnects
        self._views: dict[int, np.ndarray] = {}  # id(GenTL buffer bytes) -> image view, built once per buffer
        self._timestamps: str | None = None  # "ns", "ticks" or "host": what this device gives, found at frame 1
        self._tick_hz = 1
        self._frame_ids = True  # False when the producer has no frame ids: our own counter is used
        self._expected_id: int | None = None  # next camera frame id; None right after (re)start
        self._own_id = 0
        self._started = False
        self._lost = False  # between a loss and the first frame after a successful reconnect
        self._announce_connected = False  # camera_state(True) is due at the next frame
        self._fault: str | None = None  # a fault seen while re-queueing, handled at the next grab
        self._last_frame_mono = 0.0
        self._next_attempt = 0.0
        self._attempt = 0

    # ----------------------------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        require()
        quiet_harvesters()
        self._ctis = [os.path.abspath(os.path.expanduser(p)) for p in self.cfg.cti] or [default_cti()]
        for path in self._ctis:
            if not os.path.isfile(path):
                raise SourceError(f"source.cti: GenTL producer {path} does not exist")
        self._harvester = Harvester()
        for path in self._ctis:
            self._harvester.add_file(path)
        try:
            self._connect()
        except BaseException:
            # A refused open must not keep the producer's system module: in this process nothing else (not
            # even a corrected retry) could enumerate the devices while it is held.
            self.close()
            raise

    def start(self) -> None:
        if self._ia is None:
            raise SourceError("GenicamSource.start() before open()")
        self._start_acquisition()
        self._started = True
        self._last_frame_mono = time.monotonic()

    def grab(self, out: np.ndarray, timeout_s: float) -> Grab | None:
        now = time.monotonic()
        end = now + max(0.0, timeout_s)
        while True:
            if self._lost:
                if not self._try_reconnect(end):
                    return None
                now = time.monotonic()
            if self._fault is not None:
                self._lose(self._fault)
                continue
            lost_at = self._last_frame_mono + self.cfg.lost_after_ms / 1000
            if now >= lost_at:
                self._lose(f"no frame for {self.cfg.lost_after_ms} ms (fetches timed out)")
                continue
            wait = min(end - now, lost_at - now, self.cfg.fetch_timeout_ms / 1000)
            incomplete_before = self.stats.incomplete_buffers
            try:
                buffer = self._acquirer().try_fetch(timeout=max(wait, 0.0), is_raw=True)
            except (GenTLError, GenApiError) as exc:
                self._lose(f"producer error while fetching: {exc}")
                continue
            if buffer is not None:
                return self._deliver(buffer, out)
            now = time.monotonic()
            if self.stats.incomplete_buffers != incomplete_before:
                continue  # an incomplete buffer came and went back to the pool; wait on for a complete one
            if now >= end:
                return None

    def stop(self) -> None:
        self._started = False
        if self._ia is not None:
            try:
                self._ia.stop()
            except (GenTLError, GenApiError) as exc:
                log.warning("stopping acquisition on %s: %s", self.device_label, exc)

    def close(self) -> None:
        self._started = False
        self._teardown()
        if self._harvester is not None:
            with contextlib.suppress(Exception):
                self._harvester.reset()  # closes producers; what remains cannot be acted on anyway
            self._harvester = None

    # ---------------------------------------------------------------------------------------- frames

    def _deliver(self, buffer: Any, out: np.ndarray) -> Grab:
        """Convert one complete buffer into the slot and give the buffer back to the producer, in that order."""
        try:
            grab = self._convert(buffer, out)
        finally:
            try:
                # From here on the buffer belongs to the producer again. clear_buffer=False: genicam otherwise
                # zero-fills the whole buffer at every queue (a 10 MB memset per frame on viky, ~1 ms of CPU).
                buffer.parent.queue_buffer(buffer, False)
            except (GenTLError, GenApiError) as exc:
                self._fault = f"producer error while re-queueing a buffer: {exc}"
        self._last_frame_mono = time.monotonic()
        if self._announce_connected:
            self._announce_connected = False
            self.stats.connected = True
            detail = f"frames flowing from {self.device_label}"
            if self.stats.reconnects:
                detail += f" (reconnected, {self.stats.reconnects} so far)"
            self.events.camera_state(True, detail)
        return grab

    def _convert(self, buffer: Any, out: np.ndarray) -> Grab:
        width, height, pixel_format = buffer.width, buffer.height, buffer.pixel_format
        layout = self._layout
        if layout is None or (width, height, pixel_format) != (layout.width, layout.height, layout.pixel_format):
            layout = self._layout = self._read_layout(buffer, width, height, pixel_format)
            self._views.clear()
        frame_id = self._frame_id(buffer)
        drops = 0
        if self._expected_id is not None and frame_id > self._expected_id:
            drops = frame_id - self._expected_id
            self.stats.camera_drops += drops
        # A smaller id than expected is a camera restart or a counter wrap (GigE block ids are 16-bit): resync.
        self._expected_id = frame_id + 1
        t_device, ts_source = self._timestamp(buffer)
        bad = self._bad_frame_reason(layout)
        if bad is None:
            raw = buffer.raw_buffer
            view = self._views.get(id(raw))
            if view is None:
                view = self._views[id(raw)] = layout.view(raw)
            t0 = time.perf_counter_ns()
            assert self._converter is not None  # made with the layout for every supported format
            self._converter(view, out)
            self.stats.convert_ns += time.perf_counter_ns() - t0
            self.stats.frames += 1
        else:
            self.stats.bad_frames += 1
        return Grab(
            camera_frame_id=frame_id,
            height=height,
            width=width,
            t_device_ns=t_device,
            timestamp_source=ts_source,
            bad_frame=bad,
            camera_drops_before=drops,
        )

    def _read_layout(self, buffer: Any, width: int, height: int, pixel_format: int) -> Layout:
        name = PFNC_NAMES.get(pixel_format, hex(pixel_format))
        try:
            padding = int(buffer.padding_x)
        except GenTLError:
            padding = 0
        try:
            offset = int(buffer.image_offset)
        except GenTLError:
            offset = 0
        layout = Layout(width, height, pixel_format, name, padding, offset)
        if name in SOURCE_FORMATS and (self._converter is None or self._converter.camera_format != name):
            self._converter = Converter(name, self.cfg.pixel_format)
        return layout

    def _bad_frame_reason(self, layout: Layout) -> str | None:
        if layout.format_name not in SOURCE_FORMATS:
            return f"camera pixel format {layout.format_name} is not supported"
        if (layout.height, layout.width) != self.shape[:2]:
            return (
                f"frame is {layout.width}x{layout.height} but ring slots are {self.shape[1]}x{self.shape[0]} "
                "(Width/Height changed on the camera?)"
            )
        return None

    def _frame_id(self, buffer: Any) -> int:
        if self._frame_ids:
            try:
                return int(buffer.frame_id)
            except GenTLError:
                self._frame_ids = False  # this producer has none: count ourselves (no drop detection)
                log.warning("%s gives no frame ids: camera-side drops cannot be detected", self.device_label)
        self._own_id += 1
        return self._own_id

    def _timestamp(self, buffer: Any) -> tuple[int | None, TimestampSource]:
        # Which timestamp the device gives is found once per connection: exceptions per frame cost CPU.
        if self._timestamps is None:
            self._timestamps = "host"
            try:
                _ = buffer.timestamp_ns
                self._timestamps = "ns"
            except GenTLError:
                try:
                    _ = buffer.timestamp
                    self._tick_hz = int(buffer.parent.parent.timestamp_frequency)
                    self._timestamps = "ticks" if self._tick_hz > 0 else "host"
                except GenTLError:
                    pass
            log.info("%s: %s timestamps", self.device_label, "host" if self._timestamps == "host" else "device")
        if self._timestamps == "ns":
            return int(buffer.timestamp_ns), "device"
        if self._timestamps == "ticks":
            return int(buffer.timestamp) * 1_000_000_000 // self._tick_hz, "device"
        return None, "host"

    # ------------------------------------------------------------------------------------ connection

    def _connect(self) -> None:
        """Enumerate, select the device, open it, check and apply features, check the result against the ring."""
        h = self._harvester
        if h is None:
            raise SourceError("GenicamSource: connect before open()")
        h.update()
        entry = select_device(enumerate_devices(h), self.cfg.device, self._ctis)
        self.device_label = f"{entry.model} serial {entry.serial_number!r} ({entry.id})"
        params = ParameterSet(
            {
                ParameterKey.TIMEOUT_PERIOD_ON_UPDATE_EVENT_DATA_CALL: min(WAIT_SLICE_MS, self.cfg.fetch_timeout_ms),
                ParameterKey.ENABLE_AUTO_CHUNK_DATA_UPDATE: False,  # chunks are not used; parsing costs per frame
            }
        )
        # harvesters installs a SIGINT handler that destroys the acquirer when created on the main thread; the
        # daemon owns signals, so the previous handler is put back.
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT) if on_main else None
        stack = contextlib.ExitStack()
        try:
            try:
                ia = h.create(entry.info, config=params)
            except (GenTLError, GenApiError, ValueError) as exc:
                raise SourceError(f"cannot open {self.device_label}: {exc}") from None
            finally:
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)
            # Leaving the stack runs the acquirer's own finalizer (destroy + detach): calling destroy() alone
            # would leave harvesters' weakref.finalize holding the acquirer, leaking one per reconnect.
            stack.enter_context(ia)
            ia.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, _incomplete_counter(self.stats))
            node_map = ia.remote_device.node_map
            apply_features(node_map, self.cfg.features, self.device_label)
            self._check_format(node_map)
            try:
                ia.num_buffers = self.cfg.num_buffers
            except ValueError as exc:
                raise SourceError(f"source.num_buffers {self.cfg.num_buffers}: {exc}") from None
            self._set_stream_mode(ia)
            # harvesters allocates the GenTL buffers as Python bytes at every start, and the producer keeps a
            # reference to each until it is revoked. A device that vanished cannot revoke them, so every
            # reconnect would leak num_buffers x PayloadSize (80 MB a cycle on viky). The source owns the
            # buffers instead and hands the same ones to each connection: memory stays flat (docs/CAMERA.md).
            if hasattr(ia, "_create_raw_buffers"):
                ia._create_raw_buffers = self._raw_buffers
            else:  # pragma: no cover - a harvesters release without that hook
                log.warning("harvesters has no buffer allocation hook: each reconnect may leak its buffers")
            # harvesters' fps statistics ask every buffer for its timestamp three ways; on a device without
            # timestamps (viky) that is three GenTL errors turned into Python exceptions per frame, ~100 us of
            # CPU. CameraStats counts what the daemon needs, so that bookkeeping is switched off.
            if hasattr(ia, "_update_statistics"):
                ia._update_statistics = _no_statistics
        except BaseException:
            stack.close()
            raise
        self._ia, self._ia_stack = ia, stack
        log.info("opened %s through %s", self.device_label, entry.cti)

    def _acquirer(self) -> ImageAcquirer:
        if self._ia is None:
            raise SourceError(f"{self.device_label} is not connected")  # a state-machine slip, said plainly
        return self._ia

    def _raw_buffers(self, num_buffers: int = 0, size: int = 0) -> list[bytes]:
        """The GenTL buffers to announce: the source's own, reused by every connection while the size holds."""
        if len(self._buffer_pool) != num_buffers or any(len(b) != size for b in self._buffer_pool):
            self._buffer_pool = [bytes(size) for _ in range(num_buffers)]
        return self._buffer_pool

    def _check_format(self, node_map: Any) -> None:
        width, height, pixel_format = (read_node(node_map, n) for n in ("Width", "Height", "PixelFormat"))
        problems = []
        if width is not None and height is not None and (height, width) != self.shape[:2]:
            problems.append(
                f"the camera is set to {width}x{height} but the ring slots are {self.cfg.width}x{self.cfg.height} "
                "(set Width/Height in source.features or change source.width/height)"
            )
        if pixel_format is not None:
            if (pixel_format, self.cfg.pixel_format) not in CONVERSIONS:
                problems.append(
                    f"camera PixelFormat {pixel_format} cannot be converted to the ring's {self.cfg.pixel_format}; "
                    f"set PixelFormat in source.features to one of {', '.join(SOURCE_FORMATS)} that it offers"
                )
            else:
                self._converter = Converter(pixel_format, self.cfg.pixel_format)
        if problems:
            raise SourceError(f"{self.device_label}: " + "; ".join(problems))

    def _set_stream_mode(self, ia: ImageAcquirer) -> None:
        # OldestFirst: buffers come in order and, when none is queued, the camera drops the *new* frame; its
        # id is then missing and counted. Other modes overwrite or skip buffers behind the consumer's back.
        with contextlib.suppress(Exception):
            node = ia.data_streams[0].node_map.get_node("StreamBufferHandlingMode")
            if access_mode(node) == EAccessMode.RW and "OldestFirst" in enum_entries(node):
                node.value = "OldestFirst"

    def _start_acquisition(self) -> None:
        self._layout = None
        self._views.clear()
        self._timestamps = None
        self._expected_id = None  # frame ids restart with acquisition: the first one is no gap
        self._announce_connected = True
        self._fault = None
        try:
            self._acquirer().start()
        except (GenTLError, GenApiError) as exc:
            raise SourceError(f"cannot start acquisition on {self.device_label}: {exc}") from None

    def _teardown(self) -> None:
        ia, stack = self._ia, self._ia_stack
        self._ia = self._ia_stack = None
        self._views.clear()  # views keep the old buffers' memory alive
        self._layout = None
        if ia is None or stack is None:
            return
        # genicam's ChunkAdapter registers weakref.finalize(self, self._destruct): the bound method keeps the
        # adapter, and with it the device's whole GenApi node map (~0.4 MB), alive until that finalizer runs,
        # which harvesters never does (it only drops its reference). Run it once the acquirer is gone.
        adapter = getattr(ia, "_chunk_adapter", None)
        try:
            ia.stop()
        except Exception as exc:  # a lost device fails here in many ways; none actionable
            log.debug("stop after loss: %s", exc)
        try:
            stack.close()
        except Exception as exc:  # likewise
            log.debug("destroy after loss: %s", exc)
        finalizer = getattr(adapter, "_finalizer", None)
        if finalizer is not None:
            with contextlib.suppress(Exception):
                finalizer()

    def _lose(self, reason: str) -> None:
        self._fault = None
        if self._lost:
            return
        self._lost = True
        self.stats.losses += 1
        self.stats.connected = False
        self.stats.last_error = reason
        self._attempt = 0
        self._next_attempt = time.monotonic() + self._backoff_s()
        log.warning("camera %s lost: %s; reconnecting", self.device_label, reason)
        self.events.camera_state(False, reason)
        self._teardown()

    def _backoff_s(self) -> float:
        steps = self.cfg.reconnect_backoff_ms
        return steps[min(self._attempt, len(steps) - 1)] / 1000

    def _try_reconnect(self, end: float) -> bool:
        """One reconnect attempt if one is due, else wait (at most until `end`). True when streaming again."""
        now = time.monotonic()
        if now < self._next_attempt:
            time.sleep(max(0.0, min(self._next_attempt, end) - now))
            if time.monotonic() < self._next_attempt:
                return False
        try:
            self._connect()
            self._start_acquisition()
        except SourceError as exc:
            self._teardown()
            self._attempt += 1
            self.stats.reconnect_failures += 1
            self.stats.last_error = str(exc)
            delay = self._backoff_s()
            self._next_attempt = time.monotonic() + delay
            log.warning("reconnect to %s failed (next try in %.1f s): %s", self.device_label, delay, exc)
            return False
        except (GenTLError, GenApiError) as exc:
            self._teardown()
            self._attempt += 1
            self.stats.reconnect_failures += 1
            self.stats.last_error = f"producer error while reconnecting: {exc}"
            self._next_attempt = time.monotonic() + self._backoff_s()
            log.warning("reconnect to %s failed: %s", self.device_label, exc)
            return False
        self._lost = False
        self.stats.reconnects += 1
        self._last_frame_mono = time.monotonic()  # the lost_after_ms clock starts again with acquisition
        log.info("reconnected to %s; waiting for frames", self.device_label)
        return True


def _no_statistics(buffer: Any) -> None:
    return None


def _incomplete_counter(stats: CameraStats) -> Any:
    """A harvesters Callback for INCOMPLETE_BUFFER: harvesters re-queued such a buffer inside the fetch."""

    class CountIncomplete(Callback):  # type: ignore[misc]  # harvesters has no type information: its base is Any
        def emit(self, context: Any = None) -> None:
            stats.incomplete_buffers += 1

    return CountIncomplete()
