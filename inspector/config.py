"""Line configuration: pydantic models (the single source of truth) and YAML loading.

Every field has a description; `configs/reference.yaml` documents every option and a test keeps the two in
step. Config objects do no I/O: paths are checked by the daemon when it loads what they point to.

Errors name the field, the YAML line, the bad value and what is allowed, e.g.::

    configs/line1.yaml:14: decision.block_threshold: Input should be less than or equal to 1 (got 1.5)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, overload

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
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------------------------- line


class LineConfig(_Model):
    name: str = Field(
        "line1",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Production line name; first part of the ZeroMQ topic and a metrics label.",
    )
    camera: str = Field(
        "cam1",
        pattern=r"^[A-Za-z0-9_.-]+$",
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
        20.0, gt=0, le=10000, description="Frames per second; null = as fast as the pipeline takes them."
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
    seed: int = Field(0, description="Random seed: the same seed renders the same sequence of parts.")
    pool_size: int = Field(
        64,
        ge=1,
        le=4096,
        description="Parts pre-rendered at start and cycled (keeps rendering cost off the hot path).",
    )


class FolderSourceConfig(_SourceBase):
    kind: Literal["folder"] = Field(description="Replay images from a directory.")
    path: str = Field(description="Directory of images (searched recursively for png/jpg/bmp/tif).")
    pattern: str = Field("**/*", description="Glob pattern below `path` for files to replay.")
    rate_hz: float | None = Field(
        None, gt=0, le=100000, description="Frames per second; null = as fast as the pipeline takes them."
    )
    loop: bool = Field(True, description="Start again from the first image after the last one.")
    resize: bool = Field(
        True,
        description="Resize images to width x height at load time. If false, an image of another size is a "
        "bad frame (rejected with reason bad_frame, never silently dropped).",
    )
    masks: bool = Field(
        True,
        description="Attach ground truth from a mask beside each image (NAME.png for NAME.jpg, or "
        "masks/NAME.png), when present, for live accuracy.",
    )


class GenicamFeature(_Model):
    name: str = Field(description="GenICam feature name (node), e.g. ExposureTime.")
    value: bool | int | float | str = Field(description="Value to set before acquisition starts.")


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
    reconnect_backoff_ms: list[int] = Field(
        default_factory=lambda: [200, 500, 1000, 2000, 5000],
        min_length=1,
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
        1,
        ge=0,
        le=256,
        description="ONNX Runtime intra-op threads; 0 = ONNX Runtime's choice, one per physical core. 1 leaves "
        "the other cores to acquisition, preprocessing and publishing, and was fastest on the 2-core reference "
        "machine, bare and in the daemon (docs/BENCHMARKS.md); tools/bench_pipeline.py measures yours.",
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
    device: int = Field(0, ge=0, description="CUDA device ordinal.")


class ModelSpec(_Model):
    path: str = Field(description="Model file (ONNX or TensorRT engine); its manifest is PATH.manifest.json.")
    expect_classes: list[str] | None = Field(
        None,
        description="If set, the model's manifest must list exactly these classes (segmenter) or the model is refused.",
    )
    expect_input: tuple[int, int] | None = Field(
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
        gt=0,
        le=600000,
        description="A frame not decided this long after acquisition gets a timeout verdict.",
    )
    failsafe_result: Literal["reject", "pass"] = Field(
        "reject",
        description="Verdict for frames that could not be inspected (overload, timeout, error, bad_frame). "
        "pass is an explicit opt-in: it lets uninspected parts through.",
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


# ----------------------------------------------------------------------------------------- decision

Point = tuple[float, float]


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
        10, ge=0, description="Smallest blob area (frame pixels) that rejects a part, for classes not listed below."
    )
    min_area_px_per_class: dict[str, int] = Field(
        default_factory=dict, description="Smallest rejecting blob area per defect class, overriding min_area_px."
    )
    max_defects_reported: int = Field(
        32, ge=1, le=1024, description="At most this many blobs (largest first) are listed in a verdict."
    )
    ignore_regions: IgnoreRegions = Field(
        default_factory=IgnoreRegions, description="Regions of the frame where defects are ignored."
    )

    @field_validator("min_area_px_per_class")
    @classmethod
    def _areas_non_negative(cls, areas: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in areas.items() if v < 0}
        if bad:
            raise ValueError(f"areas must be >= 0, got {bad}")
        return areas


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
        return bind


_WILDCARD_HOSTS = {"*", "0.0.0.0", "::", "[::]", ""}
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1"}


def _host_port(host: str, port: str) -> tuple[str, int] | None:
    """(normalised host, port) of a TCP address, or None when the port is chosen by the system (0 or *)."""
    if not port.isdigit() or int(port) == 0:
        return None
    host = "*" if host in _WILDCARD_HOSTS else ("127.0.0.1" if host in _LOOPBACK_HOSTS else host.strip("[]"))
    return host, int(port)


def endpoint_address(endpoint: str) -> tuple[str, str, int | None]:
    """A ZeroMQ endpoint as (transport, host or path, port): tcp://*:5555 -> ("tcp", "*", 5555)."""
    transport, _, rest = endpoint.partition("://")
    if transport != "tcp":
        return transport, rest, None
    host, _, port = rest.rpartition(":")
    hp = _host_port(host, port)
    return ("tcp", hp[0], hp[1]) if hp else ("tcp", host, None)


def addresses_clash(a: tuple[str, str, int | None], b: tuple[str, str, int | None]) -> bool:
    """Whether two listening addresses would collide: same transport and, for TCP, the same port on hosts
    that overlap (equal, or either a wildcard). System-chosen ports (0, *) never clash."""
    if a[0] != b[0]:
        return False
    if a[0] != "tcp":
        return a[1] == b[1]
    if a[2] is None or b[2] is None or a[2] != b[2]:
        return False
    return a[1] == b[1] or "*" in (a[1], b[1])


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
        1.0, gt=0, le=3600, description="How often the status line is refreshed (in a terminal) or logged."
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
        10240, ge=1, description="Largest size of the archive's records (MiB); the oldest are deleted to stay below."
    )
    keep_free_mb: int = Field(
        1024,
        ge=0,
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
                    f"the exporter's {metrics.bind}:{metrics.port} is also publish.{name}.bind ({sock.bind}); "
                    "give the metrics exporter a port of its own"
                )
        return metrics

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


@dataclass(frozen=True)
class ConfigIssue:
    path: str  # dotted field path, e.g. "decision.block_threshold"
    line: int | None  # 1-based line in the YAML file
    message: str
    value: Any = None
    has_value: bool = False

    def format(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        got = f" (got {self.value!r})" if self.has_value else ""
        return f"{where}: {self.path or '<top level>'}: {self.message}{got}"


YamlPath = tuple[str | int, ...]  # keys and list indices from the document's root, as pydantic's error locations


class ConfigError(Exception):
    """A config file that cannot be used. `str()` is the complete, human-readable report."""

    def __init__(self, file: str, issues: Iterable[ConfigIssue]):
        self.file = file
        self.issues = list(issues)
        super().__init__("\n".join(issue.format(file) for issue in self.issues))


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
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(file, [ConfigIssue("", line, f"not valid YAML: {problem}")]) from None
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
        raise ConfigError(file, issues) from None


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
    """Read and validate a config file. Raises ConfigError with file/line/field for every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [ConfigIssue("", None, f"cannot read file: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [ConfigIssue("", None, f"not UTF-8 text: {exc.reason}")]) from None
    return parse_config(text, str(path), model)


def resolve_path(config_file: str | Path, value: str) -> Path:
    """Paths in a config are relative to the config file's directory (so a line config can move as a unit)."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (Path(config_file).resolve().parent / p)
