"""TensorRT backend: runs a serialized engine built by `inspector-build-engine`.

Before anything is deserialized, the engine's manifest is checked against the running TensorRT and GPU: an
engine is bound to the exact TensorRT release and to the GPU model it was built (and tuned) on, and to the
precision and largest batch it was built for. A mismatch is refused with a message that names what differs and
gives the exact command that rebuilds it — or, with `models.tensorrt.auto_rebuild`, the engine is rebuilt from
the ONNX model it came from into `engine_cache_dir` (minutes, once; later starts find it there). A model path
that points at an ONNX model is treated the same way: its engine is looked up in (or built into) the cache.

Running (shared with the CUDA backend through `gpu_io.DeviceIO`): preallocated pinned host and device
buffers for every I/O tensor, one non-blocking CUDA stream per engine, addresses bound once with
`set_tensor_address`, `execute_async_v3` (its bool return checked), outputs read only after the stream is
synchronized, and one CUDA graph per batch size (upload + inference + download in one launch).
"""

from __future__ import annotations

import collections
import logging
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspector.backends.base import BackendError, BackendSettings
from inspector.backends.gpu_io import DeviceIO
from inspector.backends.gpu_memory import device_info, gpu_available, set_device
from inspector.config import TensorRTSettings
from inspector.manifest import ManifestError, ModelManifest, manifest_path, read_manifest

log = logging.getLogger(__name__)


class EngineRefused(BackendError):
    """An engine that must not be loaded here; the message ends with the command that rebuilds it."""


def default_engine_path(onnx_path: Path, precision: str, batch: int) -> Path:
    return onnx_path.with_name(f"{onnx_path.stem}.{precision}.b{batch}.engine")


def build_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    batch: int,
    calibration: str | Path | None = None,
) -> str:
    """The exact shell command that (re)builds an engine; quoted in every refusal message."""
    args = ["inspector-build-engine", str(onnx_path), "--output", str(engine_path)]
    args += ["--precision", precision, "--batch", str(batch)]
    if precision == "int8":
        args += ["--calibration", str(calibration) if calibration else "CALIBRATION_IMAGE_DIR"]
    return shlex.join(args)


@dataclass(frozen=True)
class RuntimeDescription:
    """What an engine must match: the TensorRT release and the GPU it runs on."""

    trt_version: str
    gpu: str
    compute_capability: str


def describe_runtime(device: int = 0) -> RuntimeDescription:
    trt = _import_tensorrt()
    info = device_info(device)
    return RuntimeDescription(trt.__version__, info.name, info.compute_capability)


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        try:
            import tensorrt_lean as trt  # the runtime-only package: enough to deserialize and run engines
        except ImportError:
            raise BackendError(
                "models.backend is tensorrt but TensorRT is not installed (pip install 'inspector[gpu]'); "
                "use backend cuda or onnxruntime on this machine"
            ) from None
    return trt


def trt_release(version: str) -> tuple[int, ...]:
    """ "10.3.0.26" -> (10, 3, 0): engines are tied to major.minor.patch (the build number does not matter)."""
    parts = []
    for p in version.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def engine_mismatches(
    manifest: ModelManifest, runtime: RuntimeDescription, *, precision: str | None, batch: int
) -> list[str]:
    """Why this engine cannot run here, one reason per entry; empty if it can. Pure: testable without a GPU."""
    info = manifest.tensorrt
    if manifest.format != "tensorrt" or info is None:
        return [f"it is an {manifest.format} model, not a TensorRT engine"]
    problems = []
    if trt_release(info.version) != trt_release(runtime.trt_version):
        problems.append(f"it was built with TensorRT {info.version}, this is TensorRT {runtime.trt_version}")
    if info.compute_capability != runtime.compute_capability:
        problems.append(
            f"it was built for compute capability {info.compute_capability} ({info.gpu}), this GPU is "
            f"{runtime.compute_capability} ({runtime.gpu})"
        )
    elif info.gpu.strip().lower() != runtime.gpu.strip().lower():
        problems.append(
            f"it was built and tuned on {info.gpu!r}, this GPU is {runtime.gpu!r} (engines are per GPU model)"
        )
    if precision is not None and info.precision != precision:
        problems.append(f"it is a {info.precision} engine, the config asks for {precision}")
    if batch > info.profile.max:
        problems.append(f"its batch profile ends at {info.profile.max}, the config's pipeline.batch_size is {batch}")
    return problems


def _onnx_for(model_path: Path, manifest: ModelManifest | None) -> Path:
    """The ONNX model an engine came from (as recorded), else the conventional one beside it."""
    if manifest is not None and manifest.tensorrt is not None and manifest.tensorrt.onnx_file:
        return Path(manifest.tensorrt.onnx_file)
    stem = model_path.name.split(".")[0]
    return model_path.with_name(stem + ".onnx")


def refusal(
    model_path: Path,
    manifest: ModelManifest | None,
    problems: list[str],
    *,
    precision: str | None,
    batch: int,
    onnx_path: Path | None = None,
) -> EngineRefused:
    """The refusal: what is wrong, and the exact command that builds a usable engine at the same path."""
    info = manifest.tensorrt if manifest is not None else None
    want = precision or (info.precision if info else "fp16")
    calibration = info.calibration_source if info else None
    command = build_command(onnx_path or _onnx_for(model_path, manifest), model_path, want, batch, calibration)
    reasons = "; ".join(problems)
    return EngineRefused(
        f"refusing TensorRT engine {model_path}: {reasons}. Rebuild it on this machine with:\n  {command}\n"
        "(or set models.tensorrt.auto_rebuild: true to rebuild into models.tensorrt.engine_cache_dir)"
    )


def read_engine_manifest(model_path: str | Path, settings: TensorRTSettings, batch: int) -> ModelManifest:
    """`read_manifest` for the TensorRT backend: a missing engine is refused with the command that builds it."""
    model_path = Path(model_path)
    if not model_path.is_file() and not settings.auto_rebuild:
        raise refusal(model_path, None, ["the engine file does not exist"], precision=settings.precision, batch=batch)
    if not model_path.is_file():
        onnx_path = _onnx_for(model_path, None)
        try:
            return read_manifest(onnx_path)
        except ManifestError as exc:
            raise BackendError(f"engine {model_path} is missing and cannot be rebuilt: {exc}") from None
    try:
        return read_manifest(model_path)
    except ManifestError as exc:
        raise BackendError(str(exc)) from None


def cached_engine_path(
    cache_dir: Path, onnx_manifest_sha: str, stem: str, precision: str, batch: int, runtime: RuntimeDescription
) -> Path:
    """Cache file name carrying everything the engine is bound to, so a stale entry is never picked up."""
    trt = ".".join(map(str, trt_release(runtime.trt_version)))
    cc = runtime.compute_capability.replace(".", "")
    return cache_dir / f"{stem}-{onnx_manifest_sha[:12]}-{precision}-b{batch}-trt{trt}-sm{cc}.engine"


def resolve_engine(
    model_path: Path,
    manifest: ModelManifest,
    settings: TensorRTSettings,
    batch: int,
    runtime: RuntimeDescription,
    *,
    build: EngineBuilder | None = None,
) -> tuple[Path, ModelManifest]:
    """The engine to load for this model: itself if it matches, else a cached or freshly built one (only with
    auto_rebuild), else EngineRefused. `build` defaults to `build_in_child_process` (injectable for tests)."""
    if manifest.format == "tensorrt":
        problems = engine_mismatches(manifest, runtime, precision=settings.precision, batch=batch)
        if not problems:
            return model_path, manifest
        if not settings.auto_rebuild:
            raise refusal(model_path, manifest, problems, precision=settings.precision, batch=batch)
        onnx_path = _onnx_for(model_path, manifest)
        log.warning("engine %s cannot run here (%s); rebuilding from %s", model_path, "; ".join(problems), onnx_path)
    else:
        onnx_path = model_path
    try:
        onnx_manifest = read_manifest(onnx_path)
    except ManifestError as exc:
        raise EngineRefused(f"cannot rebuild the engine for {model_path}: {exc}") from None
    # Rebuild at the precision asked for, else the one the engine had (an INT8 engine stays INT8), else FP16.
    precision = settings.precision or (manifest.tensorrt.precision if manifest.tensorrt else "fp16")
    if precision == "int8":
        info = manifest.tensorrt
        if info is None or not info.calibration_source:
            raise EngineRefused(
                f"cannot auto-build an INT8 engine for {model_path}: no calibration set recorded. Build it with:\n  "
                + build_command(onnx_path, default_engine_path(onnx_path, "int8", batch), "int8", batch)
            )
    cache_dir = Path(settings.engine_cache_dir).expanduser()
    target = cached_engine_path(cache_dir, onnx_manifest.sha256, onnx_path.stem, precision, batch, runtime)
    if target.is_file() and manifest_path(target).is_file():
        cached = read_manifest(target)
        if not engine_mismatches(cached, runtime, precision=precision, batch=batch):
            return target, cached
    if manifest.format == "onnx" and not settings.auto_rebuild:
        engine = default_engine_path(onnx_path, precision, batch)
        raise refusal(
            engine,
            None,
            [
                f"{model_path} is an ONNX model (no engine cached in {cache_dir}); build its engine and point the "
                "config at it"
            ],
            precision=precision,
            batch=batch,
            onnx_path=onnx_path,
        )
    if build is None:
        build = build_in_child_process
    source = manifest.tensorrt.calibration_source if manifest.tensorrt else None
    calibration = Path(source) if precision == "int8" and source else None
    log.warning("building TensorRT engine %s (%s, batch %d): this takes minutes", target, precision, batch)
    built = build(
        onnx_path,
        target,
        precision=precision,
        batch=batch,
        calibration=calibration,
        timing_cache=cache_dir / "tensorrt.timing-cache",
        device=settings.device,
    )
    return target, built


# (onnx_path, engine_path, *, precision, batch, calibration, timing_cache, device) -> the engine's manifest
EngineBuilder = Callable[..., ModelManifest]

BUILD_LOG_TAIL = 20  # lines of a failed build's output kept; the last one is quoted in the refusal


def build_in_child_process(
    onnx_path: Path,
    engine_path: Path,
    *,
    precision: str,
    batch: int,
    calibration: Path | None,
    timing_cache: Path,
    device: int,
) -> ModelManifest:
    """auto_rebuild: `python -m inspector.build` (= inspector-build-engine) in a child process.

    The daemon never imports the builder: onnx and TensorRT's builder library stay out of its memory, a builder
    crash cannot take the running line down, and the builder's GPU memory is returned when the child exits.
    Needs the `build` extra; without it the refusal quotes the child's one-line reason.
    """
    args = [sys.executable, "-m", "inspector.build", str(onnx_path), "--output", str(engine_path)]
    args += ["--precision", precision, "--batch", str(batch), "--timing-cache", str(timing_cache)]
    args += ["--device", str(device)]
    if calibration is not None:
        args += ["--calibration", str(calibration)]
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    # The build takes minutes: its progress goes to the log line by line (the builder writes one line per phase
    # when its stderr is not a terminal); the last lines are kept for the refusal if it fails.
    last: collections.deque[str] = collections.deque(maxlen=BUILD_LOG_TAIL)
    with subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as child:
        assert child.stderr is not None
        for line in child.stderr:
            line = line.rstrip()
            if line:
                log.info("engine build: %s", line)
                last.append(line)
    if child.returncode != 0:
        why = last[-1] if last else f"exit status {child.returncode}"
        raise EngineRefused(
            f"could not build {engine_path} (`{shlex.join(['inspector-build-engine', *args[3:]])}`): {why}"
        )
    try:
        return read_manifest(engine_path)
    except ManifestError as exc:
        raise EngineRefused(f"the engine build reported success but {exc}") from None


def _precision_of(manifest: ModelManifest) -> str:
    return manifest.tensorrt.precision if manifest.tensorrt is not None else "fp16"


class _TrtLogger:
    """Routes TensorRT's log into Python logging (created lazily: needs tensorrt)."""

    @staticmethod
    def make(trt: Any) -> Any:
        class Logger(trt.ILogger):  # type: ignore[misc]  # TensorRT has no type information: its base is Any
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                level = {
                    trt.ILogger.INTERNAL_ERROR: logging.CRITICAL,
                    trt.ILogger.ERROR: logging.ERROR,
                    trt.ILogger.WARNING: logging.WARNING,
                    trt.ILogger.INFO: logging.DEBUG,
                }.get(severity, logging.DEBUG)
                log.log(level, "TensorRT: %s", msg)

        return Logger()


class TensorRTBackend(DeviceIO):
    """Backend(model_path, manifest, settings, max_batch) for TensorRT engines (see the module docstring)."""

    @classmethod
    def unavailable(cls, settings: BackendSettings) -> str | None:
        try:
            _import_tensorrt()
        except BackendError as exc:
            return str(exc)
        ok, why = gpu_available(settings.device if isinstance(settings, TensorRTSettings) else 0)
        return None if ok else f"TensorRT is installed but the GPU is not usable: {why}"

    def __init__(self, model_path: str | Path, manifest: ModelManifest, settings: TensorRTSettings, max_batch: int):
        trt = _import_tensorrt()
        self.device = settings.device
        set_device(settings.device)
        runtime = describe_runtime(settings.device)
        path, manifest = resolve_engine(Path(model_path), manifest, settings, max_batch, runtime)
        self.manifest = manifest
        self.max_batch = max_batch
        self.path = path
        self._trt_logger = _TrtLogger.make(trt)
        self._runtime = trt.Runtime(self._trt_logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialize {path} (see the TensorRT log); rebuild it")
        spec = manifest.input
        inputs, outputs = [], {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs.append((name, shape, dtype))
            else:
                outputs[name] = ((max_batch, *shape[1:]), dtype)
        if [i[0] for i in inputs] != [spec.name]:
            raise BackendError(
                f"engine {path} inputs {[i[0] for i in inputs]} differ from the manifest's {spec.name!r}"
            )
        _, in_shape, in_dtype = inputs[0]
        if in_dtype != np.uint8 or tuple(in_shape[1:]) != (spec.height, spec.width, spec.channels):
            raise BackendError(f"engine {path} input is {in_dtype}{in_shape}, the manifest says uint8 NHWC {spec}")
        missing = {o.name for o in manifest.outputs} - set(outputs)
        if missing:
            raise BackendError(f"engine {path} lacks outputs {sorted(missing)} named in its manifest")
        lo, _, hi = self.engine.get_tensor_profile_shape(spec.name, 0)
        if lo[0] > 1 or hi[0] < max_batch:
            raise EngineRefused(
                f"engine {path} accepts batches {lo[0]}..{hi[0]}, the pipeline needs 1..{max_batch}. Rebuild with:\n  "
                + build_command(_onnx_for(path, manifest), path, _precision_of(manifest), max_batch)
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"could not create an execution context for {path} (out of GPU memory?)")
        self._init_io(
            spec.name,
            (max_batch, spec.height, spec.width, spec.channels),
            {name: outputs[name] for name in outputs},
            cuda_graphs=settings.cuda_graphs,
            log=log.warning,
        )
        # Addresses are bound once: the buffers never move, which is also what makes CUDA graph replay valid.
        for name, buf in [(spec.name, self.input), *self.outputs.items()]:
            if not self.context.set_tensor_address(name, buf.device.ptr):
                raise BackendError(f"set_tensor_address({name}) failed for {path}")
        self._batch = 0

    def _infer(self, n: int) -> None:
        if n != self._batch:
            spec = self.manifest.input
            if not self.context.set_input_shape(spec.name, (n, spec.height, spec.width, spec.channels)):
                raise BackendError(f"engine {self.path} refused input batch {n}")
            self._batch = n
        if not self.context.execute_async_v3(self.stream.handle):
            raise BackendError(f"TensorRT execute_async_v3 failed for {self.path} (see the TensorRT log)")

    def close(self) -> None:
        self._close_io()
        self.context = None
        self.engine = None
