"""Line configuration: pydantic models (the single source of truth) and YAML loading.

Every field has a description; `configs/reference.yaml` documents every option and a test keeps the two in
step. Config objects do no I/O: paths are checked by the daemon when it loads what they point to.

Errors name the field, the YAML line, the bad value and what is allowed, e.g.::

    configs/line1.yaml:14: decision.block_threshold: Input should be less than or equal to 1 (got 1.5)

A config file is untrusted input (docs/CONFIG.md, "What a file may hold"): `load_config` and `parse_config` return
a Config or raise ConfigError, nothing else, in bounded time and memory. The YAML reader refuses files over
MAX_CONFIG_BYTES, anchors and aliases (the alias bomb), nesting deeper than MAX_DEPTH, more than MAX_NODES values
and integers beyond 64 bits; the models give every number a range and refuse non-finite floats.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast, get_args, get_origin, overload

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1


class _Model(BaseModel):
    # allow_inf_nan=False: every float in a config is finite (YAML's .inf/.nan, and 1e400, are refused).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


# Integer ranges shared by several sections. Every number in a config has a range (a test checks it), so that a
# value the daemon cannot use (a negative seed, a rate of 1e-300 Hz) is refused with its line, never met at start.
MAX_AREA_PX = 16384 * 16384  # the largest frame's area
MAX_COORDINATE = 100_000.0  # polygon coordinates: a little outside the largest frame is harmless, far out is a typo
MAX_MB = 1 << 30  # 1 PiB in MiB
MAX_SEED = 2**63 - 1
MAX_BUFFER_BYTES = 16 << 30  # one preallocated frame buffer (the ring, the simulator's pool): 16 GiB
MIN_RATE_HZ = 0.01  # one frame per 100 s; slower than that is a stopped line, not a rate


# --------------------------------------------------------------------------------------------- line


class LineConfig(_Model):
    name: str = Field(
        "line1",
        pattern=r"^[A-Za-z0-9_.-]+$",
        max_length=64,  # in the topic of every message and in every metric's labels
        description="Production line name; first part of the ZeroMQ topic and a metrics label.",
    )
    camera: str = Field(
        "cam1",
        pattern=r"^[A-Za-z0-9_.-]+$",
        max_length=64,  # in the topic of every message and in every metric's labels
        description="Camera/station name on that line; second part of the ZeroMQ topic and a metrics label.",
    )


# ------------------------------------------------------------------------------------------- source

PixelFormat = Literal["mono8", "rgb8", "bgr8"]


class _SourceBase(_Model):
    width: int = Field(320, ge=16, le=16384, description="Frame width in pixels as stored in the ring.")
    height: int = Field(320, ge=16, le=16384, description="Frame height in pixels as stored in the ring.")
    pixel_format: PixelFormat = Field(
        "mono8", description="Pixel layout of ring slots: mono8 (1 channel), rgb8 or bgr8 (3 channels)."
    )


DefectKind = Literal["scratch", "crack", "pit", "stain"]
DEFECT_KINDS: tuple[DefectKind, ...] = ("scratch", "crack", "pit", "stain")


class SyntheticSourceConfig(_SourceBase):
    kind: Literal["synthetic"] = Field(description="Line simulator that renders parts with ground truth.")
    rate_hz: float | None = Field(
        20.0, ge=MIN_RATE_HZ, le=10000, description="Frames per second; null = as fast as the pipeline takes them."
    )
    defect_probability: float = Field(0.3, ge=0, le=1, description="Probability that a part is defective.")
    small_defect_fraction: float = Field(
        0.3, ge=0, le=1, description="Among defective parts, the fraction whose defect covers < 100 px."
    )
    defect_kinds: list[DefectKind] = Field(
        default_factory=lambda: list(DEFECT_KINDS),
        min_length=1,
        description="Defect kinds the simulator draws from.",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Random seed: the same seed renders the same sequence of parts."
    )
    pool_size: int = Field(
        64,
        ge=1,
        le=4096,
        description="Parts pre-rendered at start and cycled (keeps rendering cost off the hot path).",
    )


class FolderSourceConfig(_SourceBase):
    kind: Literal["folder"] = Field(description="Replay images from a directory.")
    # The ring slot bounds the images, which are replayed at their native size: it says so where it is set.
    width: int = Field(
        320,
        ge=16,
        le=16384,
        description="Ring slot width: the widest image replayed (images keep their native size; a narrower one is "
        "inspected as itself, a wider one is a bad frame, refused from its header before it is decoded).",
    )
    height: int = Field(320, ge=16, le=16384, description="Ring slot height: the tallest image replayed (likewise).")
    path: str = Field(description="Directory of images (searched recursively for png/jpg/bmp/tif).")
    pattern: str = Field("**/*", description="Glob pattern below `path` for files to replay.")
    rate_hz: float | None = Field(
        None, ge=MIN_RATE_HZ, le=100000, description="Frames per second; null = as fast as the pipeline takes them."
    )
    loop: bool = Field(True, description="Start again from the first image after the last one.")
    masks: bool = Field(
        True,
        description="Attach ground truth from a mask beside each image (NAME.png for NAME.jpg, or "
        "masks/NAME.png), when present, for live accuracy; an image without mask or class is defect-free.",
    )
    preload: bool = Field(
        False,
        description="Decode every image at start-up (after its header is checked) instead of in its turn, so "
        "that the first pass, too, measures the pipeline and not the disk (benchmarks); start-up then takes as "
        "long as decoding the folder. Decoded images are kept in memory up to 4 GiB either way.",
    )

    @model_validator(mode="before")
    @classmethod
    def _resize_removed(cls, data: Any) -> Any:
        # A replay once resized every image to width x height, and the model's preprocessing resized it again.
        if isinstance(data, dict) and "resize" in data:
            raise ValueError(
                "source.resize was removed: a folder replay delivers each image at its native size and the "
                "model's preprocessing resizes it once, as in training; delete the line, and make source.width "
                "and source.height at least the largest image's (a larger image is a bad frame)"
            )
        return data


class GenicamFeature(_Model):
    name: str = Field(description="GenICam feature name (node), e.g. ExposureTime.")
    value: bool | int | float | str = Field(
        description="Value to set before acquisition starts (an integer within 64 bits, a finite float)."
    )


class GenicamSourceConfig(_SourceBase):
    kind: Literal["genicam"] = Field(description="GenICam camera through harvesters (a GenTL consumer).")
    cti: list[str] = Field(
        default_factory=list,
        description="GenTL producer (.cti) paths; empty = the viky.cti shipped by the installed genicam "
        "package (a simulated camera).",
    )
    device: str | None = Field(
        None,
        description="Serial number, id or user-defined name of the device; null = the only device present "
        "(refused if there are several). An ambiguous match is refused.",
    )
    num_buffers: int = Field(8, ge=2, le=256, description="Number of GenTL buffers announced to the producer.")
    features: list[GenicamFeature] = Field(
        default_factory=list,
        description="Features set, in this order, before acquisition starts (e.g. Width, Height, PixelFormat, "
        "AcquisitionFrameRate, ExposureTime, TriggerMode, TriggerSource). Each is checked against the "
        "device's node map first.",
    )
    fetch_timeout_ms: int = Field(
        1000, ge=10, le=60000, description="Timeout of one buffer fetch; fetches never block forever."
    )
    lost_after_ms: int = Field(
        3000,
        ge=100,
        le=600000,
        description="No complete frame for this long means the camera is lost: it is reported and reconnected.",
    )
    reconnect_backoff_ms: list[Annotated[int, Field(ge=10, le=600000)]] = Field(
        default_factory=lambda: [200, 500, 1000, 2000, 5000],
        min_length=1,
        max_length=100,
        description="Waits between reconnect attempts; the last one repeats.",
    )


SourceConfig = Annotated[SyntheticSourceConfig | FolderSourceConfig | GenicamSourceConfig, Field(discriminator="kind")]
# source.kind -> its section (pydantic puts the kind into error locations: source.folder.rate_hz).
SOURCE_CONFIGS: dict[str, type[_SourceBase]] = {
    "synthetic": SyntheticSourceConfig,
    "folder": FolderSourceConfig,
    "genicam": GenicamSourceConfig,
}


# ------------------------------------------------------------------------------------------- models


class OnnxRuntimeSettings(_Model):
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="ONNX Runtime intra-op threads; 0 = ONNX Runtime's choice, one per physical core: on the 2-core "
        "reference machine with nothing else running, the daemon with one thread per core (2, batch 2) inspected "
        "1.7x the frames per second it did with 1 (batch 4) (docs/BENCHMARKS.md, 2026-12-03). 1 leaves the other "
        "cores to other work on a shared box (the demo line's setting); tools/bench_pipeline.py measures yours.",
    )
    inter_op_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime inter-op threads.")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimisation level."
    )


class TensorRTSettings(_Model):
    engine_cache_dir: str = Field(
        "/var/cache/inspector/engines",
        description="Where engines rebuilt automatically are stored (only with auto_rebuild).",
    )
    auto_rebuild: bool = Field(
        False,
        description="If an engine does not match the running TensorRT/GPU, rebuild it from the ONNX model it "
        "came from (slow: minutes) instead of refusing to start.",
    )
    cuda_graphs: bool = Field(True, description="Capture each batch size's inference as a CUDA graph.")
    precision: Literal["fp32", "fp16", "int8"] | None = Field(
        None,
        description="Precision the engines must have (refused otherwise) and that auto_rebuild builds; "
        "None accepts the engine's own and auto-builds fp16.",
    )
    device: int = Field(0, ge=0, le=255, description="CUDA device ordinal.")


class ModelSpec(_Model):
    path: str = Field(description="Model file (ONNX or TensorRT engine); its manifest is PATH.manifest.json.")
    expect_classes: list[str] | None = Field(
        None,
        description="If set, the model's manifest must list exactly these classes (segmenter) or the model is refused.",
    )
    expect_input: tuple[Annotated[int, Field(ge=16, le=16384)], Annotated[int, Field(ge=16, le=16384)]] | None = Field(
        None, description="If set, [height, width] the model's input must have, or the model is refused."
    )


class ModelsConfig(_Model):
    backend: Literal["onnxruntime", "tensorrt", "cuda"] = Field(
        "onnxruntime",
        description="Inference backend: onnxruntime (CPU, the embedded default), tensorrt (engines on an "
        "NVIDIA GPU) or cuda (ONNX Runtime's CUDA provider on an NVIDIA GPU).",
    )
    recognizer: ModelSpec = Field(description="Block recognizer (fully convolutional ResNet).")
    segmenter: ModelSpec | None = Field(None, description="Defect segmenter; required unless segmenter_mode is never.")
    segmenter_mode: Literal["always", "gated", "never"] = Field(
        "gated",
        description="always: segment every frame; gated: only frames the recognizer flags; never: blobs come "
        "from the recognizer's blocks.",
    )
    onnxruntime: OnnxRuntimeSettings = Field(default_factory=OnnxRuntimeSettings, description="ONNX Runtime options.")
    tensorrt: TensorRTSettings = Field(default_factory=TensorRTSettings, description="TensorRT options.")

    @model_validator(mode="after")
    def _segmenter_present(self) -> ModelsConfig:
        if self.segmenter_mode != "never" and self.segmenter is None:
            raise ValueError(
                f"segmenter_mode is {self.segmenter_mode!r} but no segmenter is configured: "
                "add models.segmenter or set segmenter_mode: never"
            )
        return self


# ----------------------------------------------------------------------------------------- pipeline


class PipelineConfig(_Model):
    ring_slots: int = Field(
        32, ge=2, le=4096, description="Preallocated frame slots between acquisition and inference."
    )
    batch_size: int = Field(
        4, ge=1, le=256, description="Largest batch; frames already waiting are batched, none are waited for."
    )
    deadline_ms: float = Field(
        1000.0,
        ge=1,
        le=600000,
        description="A frame not decided this long after acquisition gets a timeout verdict.",
    )
    failsafe_result: Literal["reject", "pass"] = Field(
        "reject",
        description="Verdict for frames that could not be inspected (overload, timeout, error, bad_frame, shutdown). "
        "pass is an explicit opt-in: it lets uninspected parts through. Never applies to bad_output (a broken "
        "model's frame) or to any frame while the engine is unhealthy (health): those are always rejects.",
    )
    warmup_runs: int = Field(2, ge=1, le=100, description="Warm-up inferences before READY=1 is sent.")
    preprocess_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="OpenCV threads per resize. 1 keeps each frame's resize on the acquisition thread's core, "
        "where it overlaps with inference instead of competing with it; raise it only for frames so large "
        "that acquisition cannot keep up (the process-wide cv2.setNumThreads). (restart)",
    )


# ------------------------------------------------------------------------------------------- health


class HealthConfig(_Model):
    max_faulty_frames: int = Field(
        20,
        ge=1,
        le=100000,
        description="Frames with a bad network output (reason bad_output: NaN, Inf, scores outside [0, 1]) or failed "
        "inference (reason error) within window_s that make the engine unhealthy: from then on every frame is "
        "rejected without inspection, an alarm event is published, inspector_engine_healthy drops to 0 and the "
        "systemd watchdog is no longer pinged, so systemd restarts the service. Sticky until that restart.",
    )
    window_s: float = Field(
        60.0,
        ge=0.1,
        le=86400,
        description="Sliding window (seconds) over which faulty frames are counted against max_faulty_frames.",
    )


# ----------------------------------------------------------------------------------------- decision

Coordinate = Annotated[float, Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)]
Point = tuple[Coordinate, Coordinate]


class IgnoreRegions(_Model):
    polygons: list[list[Point]] = Field(
        default_factory=list,
        description="Polygons in frame pixel coordinates [[x, y], ...]; defect pixels inside are ignored.",
    )
    mask: str | None = Field(None, description="Mask image the size of the frame; non-zero pixels are ignored.")

    @field_validator("polygons")
    @classmethod
    def _polygons_have_area(cls, polygons: list[list[Point]]) -> list[list[Point]]:
        for i, poly in enumerate(polygons):
            if len(poly) < 3:
                raise ValueError(f"polygon {i} has {len(poly)} points; a polygon needs at least 3")
        return polygons


class DecisionConfig(_Model):
    block_threshold: float = Field(
        0.5, ge=0, le=1, description="A recognizer block scoring at or above this is defective."
    )
    pixel_threshold: float = Field(
        0.5, ge=0, le=1, description="A segmenter pixel whose defect probability is at or above this is defective."
    )
    min_area_px: int = Field(
        10,
        ge=0,
        le=MAX_AREA_PX,
        description="Smallest blob area (frame pixels) that rejects a part, for classes not listed below.",
    )
    min_area_px_per_class: dict[str, Annotated[int, Field(ge=0, le=MAX_AREA_PX)]] = Field(
        default_factory=dict, description="Smallest rejecting blob area per defect class, overriding min_area_px."
    )
    max_defects_reported: int = Field(
        32, ge=1, le=1024, description="At most this many blobs (largest first) are listed in a verdict."
    )
    ignore_regions: IgnoreRegions = Field(
        default_factory=IgnoreRegions, description="Regions of the frame where defects are ignored."
    )


# ---------------------------------------------------------------------------------- publish/metrics


class SocketConfig(_Model):
    bind: str = Field(description="ZeroMQ endpoint the daemon binds, e.g. tcp://127.0.0.1:5555.")
    sndhwm: int = Field(1000, ge=1, le=10_000_000, description="ZeroMQ send high-water mark (messages).")
    linger_ms: int = Field(
        1000, ge=0, le=600000, description="ZeroMQ LINGER: how long unsent messages are kept at close."
    )

    @field_validator("bind")
    @classmethod
    def _endpoint(cls, bind: str) -> str:
        if not bind.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError("endpoint must start with tcp://, ipc:// or inproc://")
        if bind.startswith("tcp://"):
            host, colon, port = bind[len("tcp://") :].rpartition(":")
            if not colon or not host or not (port == "*" or (port.isdigit() and int(port) <= 65535)):
                raise ValueError("a tcp endpoint is tcp://HOST:PORT with a port 0-65535 (or * for any free port)")
        return bind


_WILDCARD_HOSTS = {"*", "0.0.0.0", "::", "[::]", ""}
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1"}


def _host_port(host: str, port: str) -> tuple[str, int] | None:
    """(normalised host, port) of a TCP address, or None when the port is chosen by the system (0 or *)."""
    if not port.isdigit() or int(port) == 0:
        return None
    host = "*" if host in _WILDCARD_HOSTS else ("127.0.0.1" if host in _LOOPBACK_HOSTS else host.strip("[]"))
    return host, int(port)


Address = tuple[str, str, int | None]  # (transport, host or path, port): see endpoint_address


def endpoint_address(endpoint: str) -> Address:
    """A ZeroMQ endpoint as (transport, host or path, port): tcp://*:5555 -> ("tcp", "*", 5555)."""
    transport, _, rest = endpoint.partition("://")
    if transport != "tcp":
        return transport, rest, None
    host, _, port = rest.rpartition(":")
    hp = _host_port(host, port)
    return ("tcp", hp[0], hp[1]) if hp else ("tcp", host, None)


def addresses_clash(a: Address, b: Address) -> bool:
    """Whether two listening addresses would collide: same transport and, for TCP, the same port on hosts
    that overlap (equal, or either a wildcard). System-chosen ports (0, *) never clash."""
    if a[0] != b[0]:
        return False
    if a[0] != "tcp":
        return a[1] == b[1]
    if a[2] is None or b[2] is None or a[2] != b[2]:
        return False
    return a[1] == b[1] or "*" in (a[1], b[1])


def first_clash(addresses: list[tuple[str, str, Address]]) -> str | None:
    """The first two (field, as written, address) that would collide, in words naming both fields; else None."""
    for i, (name_a, text_a, addr_a) in enumerate(addresses):
        for name_b, text_b, addr_b in addresses[i + 1 :]:
            if addresses_clash(addr_a, addr_b):
                return f"{name_a} {text_a} and {name_b} {text_b} are the same address; each needs its own"
    return None


class CurveConfig(_Model):
    secret_key: str = Field(
        description="The daemon's CURVE key pair: a NAME.key_secret file of `inspector keys generate` (zmq.auth "
        "format), readable by the service user only (mode 600; start is refused otherwise). Clients need the "
        "public half, NAME.key, next to it. Relative to this file.",
    )
    authorised_keys: str = Field(
        description="The clients allowed on both sockets: a directory of their public NAME.key files, or one such "
        "file; not writable by others (start is refused otherwise). Anyone else's handshake fails: they receive "
        "nothing. Relative to this file.",
    )


class PublishConfig(_Model):
    heartbeat_ms: int = Field(
        1000,
        ge=0,
        le=60000,
        description="Period of the heartbeat event on the broadcast stream (it carries the seq of the last verdict "
        "published), so a PLC gateway tells a silent daemon from an idle line and notices a lost last verdict; "
        "0 = no heartbeat.",
    )
    broadcast: SocketConfig = Field(
        default_factory=lambda: SocketConfig(bind="tcp://127.0.0.1:5555"),
        description="PUB socket: every verdict and event, for monitors (lossy when a subscriber is slow).",
    )
    actuator: SocketConfig | None = Field(
        default_factory=lambda: SocketConfig(bind="tcp://127.0.0.1:5556", sndhwm=100),
        description="Channel to the reject actuator / PLC gateway; the daemon tracks whether a receiver is "
        "connected and counts what it could not deliver. null disables it. Its sndhwm bounds the verdicts that "
        "can wait in ZeroMQ for a stalled receiver (and reach it late as a burst): keep it near the verdicts of "
        "one actuator_max_age_ms (docs/PROTOCOL.md, 'Stale verdicts').",
    )
    actuator_max_age_ms: float | None = Field(
        2000.0,
        ge=1,
        le=600000,
        description="A verdict older than this (acquisition to the moment of sending) is not sent to the actuator "
        "but counted (inspector_actuator_undelivered_total{cause=stale}); it still goes to the broadcast stream. "
        "Set it to the time a part takes from the camera to the ejector. The default, twice the default "
        "pipeline.deadline_ms, lets every verdict the pipeline decides in time through, deadline fail-safes "
        "included, and stops the backlog of a stall. null = no limit.",
    )
    curve: CurveConfig | None = Field(
        None,
        description="ZeroMQ CURVE authentication and encryption of both sockets (docs/OPERATIONS.md, 'Securing the "
        "ZeroMQ sockets'); null = none (plain TCP: keep the endpoints on a trusted network). (restart)",
    )

    @model_validator(mode="after")
    def _distinct_endpoints(self) -> PublishConfig:
        # One address for both would let a monitor's SUB and the PLC's PULL meet the wrong socket, or the
        # second bind fail at start: refused here, with both names.
        if self.actuator is not None and addresses_clash(
            endpoint_address(self.broadcast.bind), endpoint_address(self.actuator.bind)
        ):
            raise ValueError(
                f"broadcast.bind {self.broadcast.bind} and actuator.bind {self.actuator.bind} are the same address; "
                "the monitors' stream and the actuator channel each need their own"
            )
        return self


class MetricsConfig(_Model):
    enabled: bool = Field(True, description="Serve Prometheus metrics over HTTP.")
    bind: str = Field("127.0.0.1", description="Address the metrics HTTP server binds.")
    port: int = Field(9108, ge=0, le=65535, description="Port of the metrics HTTP server (0 = any free port).")


class ConsoleConfig(_Model):
    status_interval_s: float = Field(
        1.0, ge=0.1, le=3600, description="How often the status line is refreshed (in a terminal) or logged."
    )


# ------------------------------------------------------------------------------------------ archive


class ArchiveConfig(_Model):
    enabled: bool = Field(
        False,
        description="Keep the evidence of rejected frames and a sample of passes on disk (docs/ARCHIVE.md), for "
        "`inspector review`, `inspector tune` and `inspector-train import-archive`. Written by its own thread: a "
        "slow or full disk never holds up inspection; frames it cannot take are counted and alarmed. (restart)",
    )
    path: str | None = Field(
        None,
        description="Archive directory, one per line/camera (created if missing); required when enabled. "
        "Under systemd: below /var/lib/inspector. (restart)",
    )
    rejects: bool = Field(
        True,
        description="Archive every inspected frame that was rejected (reason defect) or decided after its "
        "deadline (reason timeout).",
    )
    pass_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Fraction of passing frames archived, evenly spread (0.01 = every 100th pass), so that tune "
        "and review also see what passes.",
    )
    quota_mb: int = Field(
        10240,
        ge=1,
        le=MAX_MB,
        description="Largest size of the archive's records (MiB); the oldest are deleted to stay below.",
    )
    keep_free_mb: int = Field(
        1024,
        ge=0,
        le=MAX_MB,
        description="Free space (MiB) to leave on the archive's file system: the oldest records are deleted to keep "
        "it, and a record is dropped (counted, alarmed) when it cannot be kept.",
    )
    pool_slots: int = Field(
        16,
        ge=1,
        le=1024,
        description="Frames (with their score maps) that can wait for the writer; each frame of a batch is staged "
        "here first, so at least pipeline.batch_size. When all wait, a frame to archive is dropped and counted, "
        "never waited for. Memory: slots x (frame + score maps). (restart)",
    )
    pixel_floor: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Segmenter probabilities are stored exactly where the defect probability is at or above this "
        "(or the pixel_threshold in force, if lower) and as background elsewhere: records stay small, and tune "
        "re-decides exactly at any pixel_threshold at or above it. 0 keeps every pixel (~1 MB a frame for the "
        "demo segmenter).",
    )

    @model_validator(mode="after")
    def _path_when_enabled(self) -> ArchiveConfig:
        if self.enabled and not self.path:
            raise ValueError("path is required when the archive is enabled")
        return self


# ------------------------------------------------------------------------------------------- config


class Config(_Model):
    version: Literal[1] = Field(1, description="Config schema version.")
    line: LineConfig = Field(default_factory=LineConfig, description="Which line and camera this is.")
    source: SourceConfig = Field(description="Where frames come from.")
    models: ModelsConfig = Field(description="The networks and the backend that runs them.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Buffering, batching, deadlines.")
    health: HealthConfig = Field(
        default_factory=HealthConfig,
        description="When repeated bad network outputs or failed inferences make the engine unhealthy.",
    )
    decision: DecisionConfig = Field(
        default_factory=DecisionConfig, description="Thresholds that turn scores into a verdict."
    )
    publish: PublishConfig = Field(default_factory=PublishConfig, description="ZeroMQ outputs.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus exporter.")
    console: ConsoleConfig = Field(default_factory=ConsoleConfig, description="Terminal status line.")
    archive: ArchiveConfig = Field(
        default_factory=ArchiveConfig, description="Evidence kept for review, threshold tuning and training."
    )
    gateway: dict[str, Any] | None = Field(
        None,
        description="The PLC gateway (`inspector gateway`, docs/PLC.md): OPC UA and Modbus TCP servers fed by this "
        "daemon. Validated by the gateway and by check-config; the daemon ignores it (it is not in its config hash).",
    )

    @model_validator(mode="after")
    def _buffers_fit_in_memory(self) -> Config:
        # Each bound alone is sane, their product need not be: 4096 ring slots of 16384 x 16384 RGB frames are
        # 3 TB, allocated at start (and, overcommitted, killed later). Refused here with the figures instead.
        src = self.source
        frame = src.width * src.height * (1 if src.pixel_format == "mono8" else 3)
        buffers = [("pipeline.ring_slots", self.pipeline.ring_slots)]
        if isinstance(src, SyntheticSourceConfig):
            buffers.append(("source.pool_size", src.pool_size))
        for name, count in buffers:
            if count * frame > MAX_BUFFER_BYTES:
                raise ValueError(
                    f"{name} {count} x {src.width}x{src.height} {src.pixel_format} frames is "
                    f"{count * frame / 2**30:.1f} GiB, more than the {MAX_BUFFER_BYTES // 2**30} GiB allowed for "
                    "one preallocated buffer; use fewer slots or smaller frames"
                )
        return self

    @model_validator(mode="after")
    def _archive_pool_holds_a_batch(self) -> Config:
        if self.archive.enabled and self.archive.pool_slots < self.pipeline.batch_size:
            raise ValueError(
                f"archive.pool_slots ({self.archive.pool_slots}) must be at least pipeline.batch_size "
                f"({self.pipeline.batch_size}): each frame of a batch is copied into the pool before inference"
            )
        return self

    @field_validator("metrics")
    @classmethod
    def _metrics_port_is_its_own(cls, metrics: MetricsConfig, info: ValidationInfo) -> MetricsConfig:
        publish = info.data.get("publish")  # absent when the publish section itself is invalid
        if not metrics.enabled or publish is None:
            return metrics
        hp = _host_port(metrics.bind, str(metrics.port))
        if hp is None:
            return metrics
        for name, sock in (("broadcast", publish.broadcast), ("actuator", publish.actuator)):
            if sock is not None and addresses_clash(("tcp", *hp), endpoint_address(sock.bind)):
                raise ValueError(
                    f"metrics.bind/port {metrics.bind}:{metrics.port} and publish.{name}.bind {sock.bind} are the "
                    "same address; give the metrics exporter a port of its own"
                )
        return metrics

    def listening_addresses(self) -> list[tuple[str, str, Address]]:
        """(field, as written, address) of every socket the daemon listens on, for clash checks."""
        out = [("publish.broadcast.bind", self.publish.broadcast.bind, endpoint_address(self.publish.broadcast.bind))]
        if self.publish.actuator is not None:
            bind = self.publish.actuator.bind
            out.append(("publish.actuator.bind", bind, endpoint_address(bind)))
        if self.metrics.enabled:
            hp = _host_port(self.metrics.bind, str(self.metrics.port))
            address: Address = ("tcp", *hp) if hp else ("tcp", self.metrics.bind, None)
            out.append(("metrics.bind/port", f"{self.metrics.bind}:{self.metrics.port}", address))
        return out

    def config_hash(self) -> str:
        """Stable hash of the validated config (defaults included), carried in every verdict.

        The gateway section is left out: the daemon does not use it, so editing it changes nothing on the wire."""
        canonical = json.dumps(self.model_dump(mode="json", exclude={"gateway"}), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def topic(self) -> str:
        return f"{self.line.name}/{self.line.camera}"


# ------------------------------------------------------------------------------------- YAML loading

C = TypeVar("C", bound=Config)

# Bounds on what a config file may hold, so that parsing one is bounded in time and memory whatever it holds (a
# config is untrusted input: a reload must never wedge or kill the running line). A real line config is a few KB
# and a few hundred nodes, nested at most 6 deep (decision.ignore_regions.polygons[i][j][k]); the reference with
# every comment is under 30 KB.
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 32  # nested mappings and sequences
MAX_NODES = 20_000  # scalars, mappings and sequences together (a polygon point is 3: ~6000 points fit)
MAX_INT_CHARS = 40  # an integer scalar's characters: a 64-bit value in any YAML notation fits
INT64 = (-(2**63), 2**63 - 1)  # integers outside are refused where they are read (seeds, sizes, counts fit)


@dataclass(frozen=True)
class ConfigIssue:
    path: str  # dotted field path, e.g. "decision.block_threshold"
    line: int | None  # 1-based line in the YAML file
    message: str
    value: Any = None
    has_value: bool = False

    def format(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        got = f" (got {_short(self.value)})" if self.has_value else ""
        path = self.path.encode("unicode_escape").decode("ascii") if not self.path.isprintable() else self.path
        field = f"{path}: " if path else ""  # a key holding a newline must not start a line of its own
        return f"{where}: {field}{' '.join(self.message.split())}{got}"


def _short(value: Any, limit: int = 80) -> str:
    """A value as shown in an error: a whole 1 MB list or string would bury the message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


YamlPath = tuple[str | int, ...]  # keys and list indices from the document's root, as pydantic's error locations


class ConfigError(Exception):
    """A config file that cannot be used. `str()` is the complete, human-readable report."""

    def __init__(self, file: str, issues: Iterable[ConfigIssue]):
        self.file = file
        self.issues = list(issues)
        super().__init__("\n".join(issue.format(file) for issue in self.issues))


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML this loader will not read (an alias, too deep, too many nodes, an integer too large)."""

    def __init__(self, problem: str, mark: Any, path: YamlPath = ()):  # a yaml.Mark (libyaml has its own type)
        super().__init__(problem=problem, problem_mark=mark)
        self.path = path


try:  # libyaml's scanner and parser when present (several times faster); our own composer either way
    from yaml.cyaml import CParser as _Parser  # type: ignore[attr-defined]

    _PARSER_BASES: tuple[type, ...] = (_Parser,)
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    _PARSER_BASES = (Reader, Scanner, Parser)


class _BoundedComposer(yaml.composer.Composer):
    """PyYAML's composer with the bounds above: no anchors or aliases, limited depth and node count; it records
    each node's field path for the errors found later.

    Aliases are refused rather than expansion-limited: a few hundred bytes of nested aliases expand to gigabytes
    (the "billion laughs"), and a line config has no need for them: each section is written out once."""

    peek_event: Callable[[], yaml.Event]  # the parser's, mixed in by _Loader

    def init_bounds(self) -> None:
        self.depth = 0
        self.nodes = 0
        self.path: list[str | int] = []
        self.node_paths: dict[int, YamlPath] = {}  # id(node) -> its field path

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        # A mapping's value comes with its key node, a sequence item with its position; a key comes with None.
        part = index.value if isinstance(index, yaml.ScalarNode) else index if isinstance(index, int) else None
        path = (*self.path, part) if part is not None else tuple(self.path)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise _Refused(
                f"{kind}{anchor} refused: anchors and aliases are not allowed in a line config, write the value out",
                event.start_mark,
                path,
            )
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} values in one file refused", event.start_mark, path)
        nested = isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent)
        if nested and self.depth >= MAX_DEPTH:
            raise _Refused(f"nesting deeper than {MAX_DEPTH} levels refused", event.start_mark, path)
        self.depth += nested
        if part is not None:
            self.path.append(part)
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= nested
            if part is not None:
                self.path.pop()
        self.node_paths[id(node)] = path
        return node


class _Constructor(yaml.constructor.SafeConstructor):
    """The safe constructor (no Python tags), with integers bounded and every failure tied to its line."""

    node_paths: dict[int, YamlPath]

    def construct_bounded_int(self, node: yaml.ScalarNode) -> int:
        if len(str(node.value)) > MAX_INT_CHARS:
            raise _Refused(f"integer of {len(node.value)} characters refused", node.start_mark)
        value: int = super().construct_yaml_int(node)
        if not INT64[0] <= value <= INT64[1]:
            raise _Refused("integer beyond 64 bits refused", node.start_mark)
        return value

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except _Refused as exc:
            if not exc.path:
                exc.path = self.node_paths.get(id(node), ())
            raise
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp 2024-02-30
            raise _Refused(
                f"cannot read this value: {exc}", node.start_mark, self.node_paths.get(id(node), ())
            ) from None

    def construct_refused(self, node: yaml.Node) -> Any:
        raise _Refused(f"{node.tag.rsplit(':', 1)[-1]} values are not allowed in a line config", node.start_mark)


_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_bounded_int)  # type: ignore[type-var]
# Explicit YAML types no option takes; bytes and sets would not even survive the config's JSON form (its hash).
for _tag in ("binary", "set", "omap", "pairs"):
    _Constructor.add_constructor(f"tag:yaml.org,2002:{_tag}", _Constructor.construct_refused)  # type: ignore[type-var]


class _Loader(_BoundedComposer, *_PARSER_BASES, _Constructor, yaml.resolver.Resolver):  # type: ignore[misc]
    def __init__(self, stream: str):
        parser: Any = _PARSER_BASES[0]  # the reader (pure Python) or libyaml's parser takes the text
        parser.__init__(self, stream)
        for base in _PARSER_BASES[1:]:
            cast(Any, base).__init__(self)
        yaml.composer.Composer.__init__(self)
        self.init_bounds()
        _Constructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


def read_yaml(text: str, file: str = "<config>") -> tuple[Any, yaml.Node | None]:
    """YAML text -> (data, its node tree), within the bounds above; raises ConfigError for anything else.

    The one YAML reader for line configs: every way a document can fail (syntax, refused constructs, values
    Python cannot hold, exhausted memory or recursion) ends here as a ConfigError with a line where there is one.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(file, [ConfigIssue("", None, f"file is larger than {MAX_CONFIG_BYTES // 1024} KiB")])
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _Refused as exc:
        where = ".".join(map(str, exc.path))
        raise ConfigError(file, [ConfigIssue(where, _mark_line(exc), str(exc.problem))]) from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(file, [ConfigIssue("", _mark_line(exc), f"not valid YAML: {problem}")]) from None
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(file, [ConfigIssue("", None, f"cannot be read: {type(exc).__name__}: {exc}")]) from None
    finally:
        loader.dispose()
    return data, node


def _mark_line(exc: yaml.YAMLError) -> int | None:
    mark = getattr(exc, "problem_mark", None)
    return mark.line + 1 if mark is not None else None


def _line_index(node: yaml.Node, path: YamlPath, lines: dict[YamlPath, int], issues: list[ConfigIssue]) -> None:
    """Record the 1-based line of every mapping key and sequence item, and refuse duplicate keys
    (PyYAML keeps the last one silently, which hides an engineer's edit)."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                issues.append(
                    ConfigIssue(
                        ".".join(map(str, (*path, key))),
                        key_node.start_mark.line + 1,
                        f"duplicate key (first defined on line {seen[key]})",
                    )
                )
            seen[key] = key_node.start_mark.line + 1
            child = (*path, key)
            _line_index(value_node, child, lines, issues)
            lines[child] = key_node.start_mark.line + 1  # point at the key, not its value
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*path, i), lines, issues)


def _nearest_line(lines: dict[YamlPath, int], loc: YamlPath) -> int | None:
    # Tagged unions add the tag to pydantic's loc (source.folder.rate_hz): drop parts not in the YAML.
    path: YamlPath = ()
    best = lines.get(())
    for part in loc:
        if (*path, part) in lines:
            path = (*path, part)
            best = lines[path]
    return best


def _yaml_path(lines: dict[YamlPath, int], loc: YamlPath) -> str:
    path: YamlPath = ()
    shown = []
    for part in loc:
        if (*path, part) in lines:
            path = (*path, part)
            shown.append(str(part))
        elif isinstance(part, str) and part not in SOURCE_CONFIGS:
            shown.append(part)
    return ".".join(shown)


@overload
def parse_config(text: str, file: str = ...) -> Config: ...
@overload
def parse_config(text: str, file: str, model: type[C]) -> C: ...
def parse_config(text: str, file: str = "<config>", model: type[Config] = Config) -> Config:
    """Validate YAML text; raise ConfigError (never a bare traceback) when it is not a usable config.

    `model` is the root model: Config for the daemon, a subclass of it for tools that validate a section the
    daemon keeps opaque (the PLC gateway's `gateway:`), with the same file:line errors."""
    data, node = read_yaml(text, file)
    if node is None or data is None:
        raise ConfigError(file, [ConfigIssue("", None, "file is empty")])
    if not isinstance(data, dict):
        raise ConfigError(file, [ConfigIssue("", 1, "top level must be a mapping of sections")])
    lines: dict[YamlPath, int] = {}
    issues: list[ConfigIssue] = []
    _line_index(node, (), lines, issues)
    if issues:
        raise ConfigError(file, issues)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(file, _validation_issues(exc, lines, model)) from None
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:
        # A validator meeting a value it did not foresee: still this file's problem, said in one line.
        raise ConfigError(file, [ConfigIssue("", None, f"cannot be validated: {type(exc).__name__}: {exc}")]) from None


def _validation_issues(exc: ValidationError, lines: dict[YamlPath, int], model: type[Config]) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        message = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own validators
        value = err.get("input")
        kind = err["type"]
        if kind == "extra_forbidden":
            message = "unknown field" + _allowed_fields_hint(loc, model)
        elif kind == "missing":
            message = "required field is missing"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            # Point at the discriminator (source.kind) and its value, not at the whole section.
            loc = (*loc, err["ctx"]["discriminator"].strip("'"))
            if kind == "union_tag_invalid":
                message, value = f"unknown kind; allowed: {err['ctx']['expected_tags']}", err["ctx"]["tag"]
            else:
                message = "required field is missing (it selects the kind of section)"
        issues.append(
            ConfigIssue(
                _yaml_path(lines, loc),
                _nearest_line(lines, loc),
                message,
                value,
                # A whole section as the "value" says nothing the message does not.
                has_value=kind not in ("missing", "union_tag_not_found")
                and "input" in err
                and not isinstance(value, dict),
            )
        )
    return issues


def _allowed_fields_hint(loc: YamlPath, root: type[BaseModel] = Config) -> str:
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if model is None:
            break
        if part in SOURCE_CONFIGS:
            model = SOURCE_CONFIGS[str(part)]
            continue
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        model = _model_of(field.annotation) if field else None
    if model is None:
        return ""
    return "; allowed: " + ", ".join(sorted(model.model_fields))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


@overload
def load_config(path: str | Path) -> Config: ...
@overload
def load_config(path: str | Path, model: type[C]) -> C: ...
def load_config(path: str | Path, model: type[Config] = Config) -> Config:
    """Read and validate a config file. Raises ConfigError with file/line/field for every problem, and only
    ConfigError: a file larger than MAX_CONFIG_BYTES, not a regular file, unreadable or not UTF-8 included."""
    path = Path(path)
    try:
        text = read_config_text(path)
    except OSError as exc:
        raise ConfigError(str(path), [ConfigIssue("", None, f"cannot read file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [ConfigIssue("", None, f"not UTF-8 text: {exc.reason}")]) from None
    return parse_config(text, str(path), model)


def read_config_text(path: Path) -> str:
    """The file's text, refused before it is read whole when it is larger than MAX_CONFIG_BYTES or not a regular
    file (a FIFO would block the reader, /dev/zero would never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: opening a FIFO would wait for a writer
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise OSError(0, f"larger than {MAX_CONFIG_BYTES // 1024} KiB; a line config is a few KB")
    return data.decode("utf-8")


def resolve_path(config_file: str | Path, value: str) -> Path:
    """Paths in a config are relative to the config file's directory (so a line config can move as a unit)."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (Path(config_file).resolve().parent / p)


# --------------------------------------------------------------------------------------- documentation


def ranges_markdown(root: type[BaseModel] = Config, prefix: str = "") -> str:
    """The table of every number's range in docs/CONFIG.md (a test keeps the two equal), from the models."""
    rows: dict[str, tuple[list[str], str]] = {}  # option -> (types, range); int | float fields are one row
    for path, kind, bounds in _number_ranges(root, prefix, ""):
        kinds, _ = rows.setdefault(path, ([], bounds))
        kinds.append(kind)
    lines = ["| Option | Type | Range |", "|---|---|---|"]
    lines += [f"| {path} | {' or '.join(kinds)} | {bounds} |" for path, (kinds, bounds) in rows.items()]
    return "\n".join(lines) + "\n"


def _number_ranges(model: type[BaseModel], prefix: str, note: str) -> Iterable[tuple[str, str, str]]:
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if model is Config and name == "source":  # one row set per kind of source
            for kind, cls in SOURCE_CONFIGS.items():
                yield from _number_ranges(cls, "source.", f" ({kind})")
            continue
        sub = _model_of(annotation)
        if sub is not None:
            many = get_origin(annotation) is list
            yield from _number_ranges(sub, f"{path}{'[]' if many else ''}.", note)
            continue
        for leaf, kind, bounds in _leaf_ranges(path, annotation, list(field.metadata)):
            yield f"`{leaf}`{note}", kind, bounds


def _leaf_ranges(path: str, annotation: Any, metadata: list[Any]) -> Iterable[tuple[str, str, str]]:
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *meta = get_args(annotation)
        yield from _leaf_ranges(path, inner, metadata + [c for m in meta for c in getattr(m, "metadata", [m])])
    elif annotation in (int, float):
        lo = [f">= {_num(c.ge)}" for c in metadata if _has(c, "ge")]
        lo += [f"> {_num(c.gt)}" for c in metadata if _has(c, "gt")]
        hi = [f"<= {_num(c.le)}" for c in metadata if _has(c, "le")]
        bounds = ", ".join(lo[:1] + hi[:1]) or "what the device accepts (within 64 bits, finite)"
        yield path, "integer" if annotation is int else "number", bounds
    elif origin in (list, tuple, dict):
        args = get_args(annotation)
        yield from _leaf_ranges(f"{path}[]", args[-1] if origin is dict else args[0], [])
    else:
        for arg in get_args(annotation):
            yield from _leaf_ranges(path, arg, metadata)


def _has(constraint: Any, name: str) -> bool:
    return getattr(constraint, name, None) is not None


def _num(value: float) -> str:
    return "2^63 - 1" if value == MAX_SEED else str(value) if isinstance(value, int) else f"{value:g}"
