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
import difflib
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from inspector.config import GenicamFeature, GenicamSourceConfig
from inspector.frames import CHANNELS, TimestampSource
from inspector.sources import Grab, SourceError, SourceEvents

try:  # the `camera` extra; a line without a camera never imports this module (see SOURCES)
    import genicam
    from genicam.genapi import EAccessMode, EIncMode, EInterfaceType
    from genicam.genapi import GenericException as GenApiError
    from genicam.gentl import GenericException as GenTLError
    from harvesters.core import Callback, Harvester, ImageAcquirer, ParameterKey, ParameterSet
    from harvesters.util.pfnc import dict_by_names as _PFNC
except ImportError as _exc:  # pragma: no cover - depends on the installation
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None

log = logging.getLogger(__name__)

# harvesters waits for a buffer in GenTL EventGetData calls of this length and checks its own timeout between
# them; it bounds how late a timeout (and so loss detection) can be. Idle cost: 1000/WAIT_SLICE_MS wake-ups/s.
WAIT_SLICE_MS = 20

# Camera pixel formats (PFNC names) this source converts, with their bytes per pixel.
SOURCE_FORMATS: dict[str, int] = {
    "Mono8": 1,
    "RGB8": 3,
    "BGR8": 3,
    "RGBa8": 4,
    "BGRa8": 4,
    "BayerRG8": 1,
    "BayerGR8": 1,
    "BayerGB8": 1,
    "BayerBG8": 1,
}

# (camera format, ring format) -> OpenCV conversion code, or None for a plain copy. OpenCV names Bayer patterns
# after the second row (its BayerBG is GenICam's BayerRG, i.e. an R G / G B tile); tests/test_genicam.py checks
# this mapping on mosaics of a known colour.
_CV2: dict[tuple[str, str], int | None] = {
    ("Mono8", "mono8"): None,
    ("Mono8", "rgb8"): cv2.COLOR_GRAY2RGB,
    ("Mono8", "bgr8"): cv2.COLOR_GRAY2BGR,
    ("RGB8", "rgb8"): None,
    ("RGB8", "bgr8"): cv2.COLOR_RGB2BGR,
    ("RGB8", "mono8"): cv2.COLOR_RGB2GRAY,
    ("BGR8", "bgr8"): None,
    ("BGR8", "rgb8"): cv2.COLOR_BGR2RGB,
    ("BGR8", "mono8"): cv2.COLOR_BGR2GRAY,
    ("RGBa8", "rgb8"): cv2.COLOR_RGBA2RGB,
    ("RGBa8", "bgr8"): cv2.COLOR_RGBA2BGR,
    ("RGBa8", "mono8"): cv2.COLOR_RGBA2GRAY,
    ("BGRa8", "rgb8"): cv2.COLOR_BGRA2RGB,
    ("BGRa8", "bgr8"): cv2.COLOR_BGRA2BGR,
    ("BGRa8", "mono8"): cv2.COLOR_BGRA2GRAY,
    ("BayerRG8", "rgb8"): cv2.COLOR_BayerBG2RGB,
    ("BayerRG8", "bgr8"): cv2.COLOR_BayerBG2BGR,
    ("BayerRG8", "mono8"): cv2.COLOR_BayerBG2GRAY,
    ("BayerGR8", "rgb8"): cv2.COLOR_BayerGB2RGB,
    ("BayerGR8", "bgr8"): cv2.COLOR_BayerGB2BGR,
    ("BayerGR8", "mono8"): cv2.COLOR_BayerGB2GRAY,
    ("BayerGB8", "rgb8"): cv2.COLOR_BayerGR2RGB,
    ("BayerGB8", "bgr8"): cv2.COLOR_BayerGR2BGR,
    ("BayerGB8", "mono8"): cv2.COLOR_BayerGR2GRAY,
    ("BayerBG8", "rgb8"): cv2.COLOR_BayerRG2RGB,
    ("BayerBG8", "bgr8"): cv2.COLOR_BayerRG2BGR,
    ("BayerBG8", "mono8"): cv2.COLOR_BayerRG2GRAY,
}

_TYPE_NAMES = {2: "Integer", 3: "Boolean", 4: "Command", 5: "Float", 6: "String", 7: "Register", 8: "Category"}
_TYPE_NAMES.update({9: "Enumeration", 10: "EnumEntry", 11: "Port", 0: "Value", 1: "Base"})
_ACCESS_NAMES = {0: "not implemented", 1: "not available", 2: "write-only", 3: "read-only", 4: "read/write"}


def _require_harvesters() -> None:
    if _IMPORT_ERROR is not None:
        raise SourceError(
            f"the genicam source needs harvesters and genicam (pip install 'inspector[camera]'): {_IMPORT_ERROR}"
        )


def default_cti() -> str:
    """The simulated camera producer shipped inside the installed `genicam` wheel."""
    _require_harvesters()
    return os.path.join(os.path.dirname(genicam.__file__), "viky.cti")


class Converter:
    """Converts one camera format into one ring format; built once per connection (no per-frame lookups)."""

    def __init__(self, camera_format: str, ring_format: str):
        key = (camera_format, ring_format)
        if key not in _CV2:
            supported = ", ".join(sorted(SOURCE_FORMATS))
            raise SourceError(
                f"camera pixel format {camera_format} cannot be converted to the ring's {ring_format}; "
                f"supported camera formats: {supported} (set PixelFormat in source.features)"
            )
        self.camera_format = camera_format
        self.ring_format = ring_format
        self.code = _CV2[key]
        self.bytes_per_pixel = SOURCE_FORMATS[camera_format]

    def __call__(self, src: np.ndarray, out: np.ndarray) -> None:
        # A 1-channel slot is written through its (H, W) view: OpenCV treats (H, W, 1) as 1 channel too, but
        # an explicit 2-D destination guarantees it writes in place instead of allocating a new array.
        dst = out[:, :, 0] if out.shape[2] == 1 else out
        if self.code is None:
            np.copyto(dst, src if src.ndim == dst.ndim else src.reshape(dst.shape))
        else:
            cv2.cvtColor(src, self.code, dst=dst)


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


@dataclass
class _Layout:
    """What the frames of one connection look like, read from the first buffer and checked on every one."""

    width: int
    height: int
    pixel_format: int  # PFNC value as the buffer reports it
    format_name: str
    padding_x: int
    offset: int


@dataclass
class DeviceEntry:
    """One device as enumerated (what `inspector camera list` shows and what `device:` is matched against)."""

    vendor: str
    model: str
    serial_number: str
    id: str
    user_defined_name: str
    access_status: str
    tl_type: str
    cti: str
    info: Any = field(default=None, repr=False)  # harvesters DeviceInfo

    def label(self) -> str:
        name = f", name {self.user_defined_name!r}" if self.user_defined_name else ""
        return (
            f"serial {self.serial_number!r}, id {self.id!r}{name}: {self.vendor} {self.model} "
            f"[{self.access_status}] via {self.cti}"
        )


_ACCESS_STATUS = {0: "unknown", 1: "ready", 2: "read-only", 3: "no access", 4: "busy", 5: "open", 6: "open read-only"}


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def enumerate_devices(harvester: Harvester) -> list[DeviceEntry]:
    """Devices found by the harvester's last update(), with the .cti each came through."""
    devices = []
    for info in harvester.device_info_list:
        props = info.property_dict
        try:
            cti = info.parent.parent.parent.module.path_name  # DeviceInfo -> Interface -> System -> Producer
        except Exception:  # only decoration for the listing
            cti = "?"
        status = props.get("access_status")
        devices.append(
            DeviceEntry(
                vendor=_str(props.get("vendor")),
                model=_str(props.get("model")),
                serial_number=_str(props.get("serial_number")),
                id=_str(props.get("id_")),
                user_defined_name=_str(props.get("user_defined_name")),
                access_status=_ACCESS_STATUS.get(status, _str(status)) if isinstance(status, int) else _str(status),
                tl_type=_str(props.get("tl_type")),
                cti=cti,
                info=info,
            )
        )
    return devices


def select_device(devices: list[DeviceEntry], wanted: str | None, ctis: list[str]) -> DeviceEntry:
    """The one device whose serial number, id or user-defined name is `wanted` (or the only one when None).

    No match and several matches are both refused, listing what is there: picking "the first" of two would
    inspect the wrong line without anyone noticing.
    """
    where = ", ".join(ctis)
    if not devices:
        raise SourceError(f"no GenICam device found through {where} (is the camera connected and powered?)")
    listing = "\n".join("  - " + d.label() for d in devices)
    if wanted is None:
        if len(devices) == 1:
            return devices[0]
        raise SourceError(
            f"source.device is not set and {len(devices)} devices are present; set source.device to the serial "
            f"number, id or user-defined name of one of:\n{listing}"
        )
    matches = [d for d in devices if wanted in (d.serial_number, d.id, d.user_defined_name)]
    if not matches:
        raise SourceError(f"no device matches source.device {wanted!r} through {where}; devices present:\n{listing}")
    if len(matches) > 1:
        candidates = "\n".join("  - " + d.label() for d in matches)
        raise SourceError(
            f"source.device {wanted!r} is ambiguous: it matches {len(matches)} devices:\n{candidates}\n"
            "name one device: use a value that only one of them has (an id, or set a unique user-defined name), "
            "or list only the .cti that should serve it in source.cti"
        )
    return matches[0]


# ------------------------------------------------------------------------------------------------- features


def _node_type(node: Any) -> int:
    return int(node.node.principal_interface_type)


def _access(node: Any) -> int:
    return int(node.node.get_access_mode())


def _fmt(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def allowed_text(node: Any) -> str:
    """What a feature accepts, in words, for error messages and `inspector camera features`."""
    kind = _node_type(node)
    try:
        if kind == EInterfaceType.intfIEnumeration:
            return "one of: " + ", ".join(enum_entries(node))
        if kind in (EInterfaceType.intfIInteger, EInterfaceType.intfIFloat):
            text = f"{_fmt(node.min)} .. {_fmt(node.max)}"
            mode = int(node.inc_mode)
            if mode == EIncMode.fixedIncrement:
                text += f" in steps of {_fmt(node.inc)}"
            elif mode == EIncMode.listIncrement:
                text = "one of: " + ", ".join(_fmt(v) for v in node.list_of_valid_values)
            unit = getattr(node, "unit", "")
            return text + (f" {unit}" if unit else "")
        if kind == EInterfaceType.intfIBoolean:
            return "true or false"
        if kind == EInterfaceType.intfIString:
            return "a string"
    except (GenApiError, GenTLError, AttributeError) as exc:
        return f"(not readable now: {exc})"
    return "(cannot be set from a config)"


def enum_entries(node: Any) -> list[str]:
    """Entries of an enumeration that are available now (an entry can be implemented but not selectable)."""
    names = []
    for entry in node.entries:
        if int(entry.node.get_access_mode()) in (EAccessMode.RO, EAccessMode.RW):
            names.append(entry.symbolic)
    return names


def check_feature(node_map: Any, feature: GenicamFeature) -> str | None:
    """Why `feature` cannot be set on this node map as it is now, or None when it can."""
    name, value = feature.name, feature.value
    shown = f"{name} = {value!r}"
    try:
        node = node_map.get_node(name)
    except (GenApiError, AttributeError):
        close = difflib.get_close_matches(name, [n.node.name for n in node_map.nodes if n.node.is_feature()], 3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"{shown}: the device has no feature {name!r}{hint} (`inspector camera features DEVICE` lists them)"
    kind = _node_type(node)
    type_name = _TYPE_NAMES.get(kind, str(kind))
    access = _access(node)
    if access not in (EAccessMode.RW, EAccessMode.WO):
        return f"{shown}: {name} is {_ACCESS_NAMES.get(access, access)}, it cannot be set"
    if kind == EInterfaceType.intfIEnumeration:
        allowed = enum_entries(node)
        if not isinstance(value, str) or value not in allowed:
            # YAML 1.1 reads unquoted On/Off/Yes/No as booleans: TriggerMode: Off arrives as False.
            hint = ' (YAML reads unquoted On/Off as true/false: write "On"/"Off")' if isinstance(value, bool) else ""
            return f"{shown}: not an allowed entry of {name}; the device allows: {', '.join(allowed)}{hint}"
        return None
    if kind == EInterfaceType.intfIBoolean:
        if not isinstance(value, bool):
            return f"{shown}: {name} is a Boolean feature; give true or false"
        return None
    if kind == EInterfaceType.intfIString:
        if not isinstance(value, str):
            return f"{shown}: {name} is a String feature; give a string"
        max_length = getattr(node, "max_length", None)
        if isinstance(max_length, int) and len(value) > max_length:
            return f"{shown}: longer than the {max_length} characters {name} holds"
        return None
    if kind in (EInterfaceType.intfIInteger, EInterfaceType.intfIFloat):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{shown}: {name} is an {type_name} feature; give a number ({allowed_text(node)})"
        if kind == EInterfaceType.intfIInteger and not float(value).is_integer():
            return f"{shown}: {name} is an Integer feature; give a whole number ({allowed_text(node)})"
        lo, hi = node.min, node.max
        mode = int(node.inc_mode)
        if mode == EIncMode.listIncrement:
            if not any(math.isclose(value, v, rel_tol=1e-9, abs_tol=1e-12) for v in node.list_of_valid_values):
                return f"{shown}: not a valid value of {name}; the device allows {allowed_text(node)}"
            return None
        tolerance = 1e-9 * max(1.0, abs(hi), abs(lo)) if kind == EInterfaceType.intfIFloat else 0
        if value < lo - tolerance or value > hi + tolerance:
            return f"{shown}: out of range; the device allows {allowed_text(node)}"
        if mode == EIncMode.fixedIncrement:
            inc = node.inc
            steps = (value - lo) / inc
            if kind == EInterfaceType.intfIInteger:
                off_step = (int(value) - lo) % inc != 0
            else:
                off_step = abs(steps - round(steps)) > 1e-6 * max(1.0, abs(steps))
            if off_step:
                return f"{shown}: not on the increment; the device allows {allowed_text(node)}"
        return None
    return f"{shown}: {name} is a {type_name} node, which a config cannot set"


def apply_features(node_map: Any, features: list[GenicamFeature], device: str) -> None:
    """Check every feature against the node map, then (only if all pass) set them in order.

    Each one is checked again just before it is set, because an earlier feature can change what a later one
    allows (e.g. OffsetX narrows the Width range). All problems are reported at once.
    """
    problems = [p for p in (check_feature(node_map, f) for f in features) if p]
    if problems:
        raise SourceError(f"source.features rejected by device {device}:\n  - " + "\n  - ".join(problems))
    for feature in features:
        problem = check_feature(node_map, feature)
        if problem:
            raise SourceError(f"source.features rejected by device {device} once earlier ones were set: {problem}")
        node = node_map.get_node(feature.name)
        kind = _node_type(node)
        value: Any = feature.value
        if kind == EInterfaceType.intfIInteger:
            value = int(value)
        elif kind == EInterfaceType.intfIFloat:
            value = float(value)
        try:
            node.value = value
        except (GenApiError, GenTLError) as exc:
            raise SourceError(f"device {device} refused {feature.name} = {feature.value!r}: {exc}") from None
        log.debug("set %s = %r on %s", feature.name, feature.value, device)


def _read(node_map: Any, name: str) -> Any:
    try:
        return node_map.get_node(name).value
    except (GenApiError, GenTLError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------------- source


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
        self._layout: _Layout | None = None
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
        _require_harvesters()
        _quiet_harvesters()
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
                buffer = self._ia.try_fetch(timeout=max(wait, 0.0), is_raw=True)
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
                view = self._views[id(raw)] = self._image_view(raw, layout)
            t0 = time.perf_counter_ns()
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

    def _read_layout(self, buffer: Any, width: int, height: int, pixel_format: int) -> _Layout:
        name = _PFNC_NAMES.get(pixel_format, hex(pixel_format))
        try:
            padding = int(buffer.padding_x)
        except GenTLError:
            padding = 0
        try:
            offset = int(buffer.image_offset)
        except GenTLError:
            offset = 0
        layout = _Layout(width, height, pixel_format, name, padding, offset)
        if name in SOURCE_FORMATS and (self._converter is None or self._converter.camera_format != name):
            self._converter = Converter(name, self.cfg.pixel_format)
        return layout

    def _bad_frame_reason(self, layout: _Layout) -> str | None:
        if layout.format_name not in SOURCE_FORMATS:
            return f"camera pixel format {layout.format_name} is not supported"
        if (layout.height, layout.width) != self.shape[:2]:
            return (
                f"frame is {layout.width}x{layout.height} but ring slots are {self.shape[1]}x{self.shape[0]} "
                "(Width/Height changed on the camera?)"
            )
        return None

    def _image_view(self, raw: Any, layout: _Layout) -> np.ndarray:
        """A view of the image inside a GenTL buffer (no copy), honouring line padding."""
        bpp = SOURCE_FORMATS[layout.format_name]
        stride = layout.width * bpp + layout.padding_x
        flat = np.frombuffer(raw, np.uint8, count=stride * layout.height, offset=layout.offset)
        rows = flat.reshape(layout.height, stride)[:, : layout.width * bpp]
        return rows if bpp == 1 else rows.reshape(layout.height, layout.width, bpp)

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

    def _raw_buffers(self, num_buffers: int = 0, size: int = 0) -> list[bytes]:
        """The GenTL buffers to announce: the source's own, reused by every connection while the size holds."""
        if len(self._buffer_pool) != num_buffers or any(len(b) != size for b in self._buffer_pool):
            self._buffer_pool = [bytes(size) for _ in range(num_buffers)]
        return self._buffer_pool

    def _check_format(self, node_map: Any) -> None:
        width, height, pixel_format = (_read(node_map, n) for n in ("Width", "Height", "PixelFormat"))
        problems = []
        if width is not None and height is not None and (height, width) != self.shape[:2]:
            problems.append(
                f"the camera is set to {width}x{height} but the ring slots are {self.cfg.width}x{self.cfg.height} "
                "(set Width/Height in source.features or change source.width/height)"
            )
        if pixel_format is not None:
            if (pixel_format, self.cfg.pixel_format) not in _CV2:
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
            if _access(node) == EAccessMode.RW and "OldestFirst" in enum_entries(node):
                node.value = "OldestFirst"

    def _start_acquisition(self) -> None:
        self._layout = None
        self._views.clear()
        self._timestamps = None
        self._expected_id = None  # frame ids restart with acquisition: the first one is no gap
        self._announce_connected = True
        self._fault = None
        try:
            self._ia.start()
        except (GenTLError, GenApiError) as exc:
            raise SourceError(f"cannot start acquisition on {self.device_label}: {exc}") from None

    def _teardown(self) -> None:
        ia, stack = self._ia, self._ia_stack
        self._ia = self._ia_stack = None
        self._views.clear()  # views keep the old buffers' memory alive
        self._layout = None
        if ia is None:
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

    class CountIncomplete(Callback):
        def emit(self, context: Any = None) -> None:
            stats.incomplete_buffers += 1

    return CountIncomplete()


def _quiet_harvesters() -> None:
    # harvesters logs an ERROR with a traceback for every failed wait while a device is gone (50 a second);
    # this source reports each loss once, with its reason. INSPECTOR_HARVESTERS_LOG=1 keeps harvesters' logging.
    if not os.environ.get("INSPECTOR_HARVESTERS_LOG"):
        logging.getLogger("harvesters.core").setLevel(logging.CRITICAL)


_PFNC_NAMES: dict[int, str] = {} if _IMPORT_ERROR else {_PFNC[n]: n for n in SOURCE_FORMATS if n in _PFNC}
