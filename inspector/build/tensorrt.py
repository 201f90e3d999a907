"""The TensorRT engine builder behind `inspector-build-engine`: exported ONNX model -> engine + engine manifest.

What `build_engine` does, in order:
1. Reads the ONNX model's manifest and checks the graph with `onnx_check` (TensorRT's operator table, static
   H/W, uint8 only as the input) — a refusal in a second rather than a parser error after a minute.
2. INT8 only: inserts explicit QuantizeLinear/DequantizeLinear pairs (see below) and writes that graph beside
   the engine (`ENGINE.qdq.onnx`), which is also ONNX Runtime's reference for the INT8 agreement check.
3. Builds with the TensorRT 10 Python API: one optimization profile covering batch 1..B (the pipeline batches
   whatever is waiting, so every size up to `pipeline.batch_size` occurs; opt = B because full batches are the
   loaded case), FP16/INT8 builder flags, a workspace limit, a timing cache file kept between builds (rebuilds
   after a config change take seconds of tactic timing instead of minutes), and a progress display.
4. Writes the engine atomically and its manifest: the ONNX manifest's description plus TensorRTInfo (TensorRT
   version, GPU name and compute capability, precision, batch profile, the ONNX file and its SHA-256, the
   calibration set's SHA-256) — what the daemon checks before it deserializes anything.

INT8 calibration and the Q/DQ graph: `inspector.build.quantize`. The command line: `inspector.build.cli`.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TextIO

import onnx

from inspector.backends.gpu_memory import device_info, set_device
from inspector.build import BuildError
from inspector.build.onnx_check import check_model
from inspector.build.quantize import calibration_files, calibration_hash, load_calibration_images, quantize
from inspector.manifest import BatchSpec, ManifestError, ModelManifest, TensorRTInfo, read_manifest, sha256_file
from inspector.manifest import write_manifest as write_model_manifest

Precision = Literal["fp32", "fp16", "int8"]
PRODUCER = "inspector-build-engine 1"


# ------------------------------------------------------------------------------------------------ profile


def batch_profile(batch_size: int, onnx_batch: BatchSpec | None = None) -> BatchSpec:
    """The optimization profile for a pipeline whose largest batch is `batch_size`.

    min 1 (a lone frame is inspected at once, never held back), opt = max = batch_size (TensorRT picks tactics
    for opt; under load batches are full). A static-batch ONNX model allows only its own batch.
    """
    if batch_size < 1:
        raise BuildError(f"batch size must be at least 1, got {batch_size}")
    if onnx_batch is not None and not onnx_batch.dynamic:
        if batch_size != onnx_batch.max:
            raise BuildError(
                f"the ONNX model has a static batch of {onnx_batch.max}; re-export it with a dynamic batch "
                f"to build for batch {batch_size}"
            )
        return BatchSpec(min=onnx_batch.max, opt=onnx_batch.max, max=onnx_batch.max, dynamic=False)
    return BatchSpec(min=1, opt=batch_size, max=batch_size, dynamic=True)


def profile_shapes(profile: BatchSpec, hwc: tuple[int, int, int]) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes for the image input (N, H, W, C)."""
    return tuple((n, *hwc) for n in (profile.min, profile.opt, profile.max))


# ------------------------------------------------------------------------------------------ progress display


class BuildProgress:
    """Text progress for TensorRT's build phases (fed by an IProgressMonitor adapter; testable without TRT).

    On a terminal one line is rewritten in place, showing the nested phases and their step counts; in a log
    (not a tty) each phase's start and end are printed once, with its duration, so CI logs stay short.
    Returning False from `step` asks TensorRT to cancel the build (after Ctrl-C).
    """

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.phases: dict[str, tuple[str | None, int, int, float]] = {}  # name -> (parent, steps, done, start)
        self.cancelled = False

    def start(self, name: str, parent: str | None, steps: int) -> None:
        self.phases[name] = (parent, steps, 0, time.monotonic())
        if not self.tty:
            indent = "  " * self._depth(name)
            self.stream.write(f"[build] {indent}{name} ({steps} steps)\n")
        self._draw()

    def step(self, name: str, step: int) -> bool:
        if name in self.phases:
            parent, steps, _, t0 = self.phases[name]
            self.phases[name] = (parent, steps, step + 1, t0)
            self._draw()
        return not self.cancelled

    def finish(self, name: str) -> None:
        entry = self.phases.pop(name, None)
        if entry and not self.tty:
            indent = "  " * (self._depth(entry[0]) + 1 if entry[0] else 0)
            self.stream.write(f"[build] {indent}{name} done in {time.monotonic() - entry[3]:.1f}s\n")
        self._draw()

    def _depth(self, name: str | None) -> int:
        depth = 0
        while name is not None and name in self.phases and depth < 16:
            name = self.phases[name][0]
            depth += 1
        return max(depth - 1, 0)

    def _draw(self) -> None:
        if not self.tty:
            self.stream.flush()
            return
        parts = [f"{n} {done}/{steps}" for n, (_, steps, done, _) in self.phases.items()]
        line = " > ".join(parts)[-150:]
        self.stream.write("\r\x1b[2K[build] " + line)
        if not self.phases:
            self.stream.write("\n")
        self.stream.flush()


def _trt_progress_monitor(trt: Any, progress: BuildProgress) -> Any:
    """An IProgressMonitor subclass forwarding to `progress` (the class needs tensorrt, hence built here)."""

    class Monitor(trt.IProgressMonitor):  # type: ignore[misc]  # TensorRT has no type information: its base is Any
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            progress.start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return progress.step(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            progress.finish(phase_name)

    return Monitor()


# ------------------------------------------------------------------------------------------ the build


def _atomic_write(path: Path, data: bytes | memoryview) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def import_builder() -> Any:
    """TensorRT with its builder, or BuildError in one line (tensorrt-lean only runs engines)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BuildError(
            "building engines needs TensorRT's builder (pip install 'inspector[gpu]', or the TensorRT tarball); "
            "tensorrt-lean can only run engines"
        ) from None
    return trt


def _builder_config(trt: Any, builder: Any, precision: Precision, workspace_gib: float, strongly_typed: bool) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default for FP32 layers on Ampere+; "fp32" means FP32 (the tightest tolerance in docs/GPU.md).
        config.clear_flag(trt.BuilderFlag.TF32)
    if not strongly_typed and precision in ("fp16", "int8"):
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise BuildError(
                f"TensorRT {trt.__version__} has no weakly-typed precision flags; build with --strongly-typed "
                "from a graph whose types give the precision"
            )
        config.set_flag(trt.BuilderFlag.FP16)  # also for INT8: layers left in float run in FP16
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # with Q/DQ in the graph this is explicit quantization
    return config


def build_serialized(
    onnx_bytes: bytes,
    *,
    onnx_path: Path,
    input_name: str,
    hwc: tuple[int, int, int],
    precision: Precision,
    profile: BatchSpec,
    timing_cache: Path | None,
    workspace_gib: float = 4.0,
    strongly_typed: bool = False,
    progress: BuildProgress | None = None,
    verbose: bool = False,
) -> bytes:
    """Parse and build with TensorRT; returns the serialized engine. Needs the full TensorRT (builder) library."""
    trt = import_builder()
    logger = trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch (the EXPLICIT_BATCH flag is deprecated and ignored).
    # STRONGLY_TYPED: the graph's own types (an fp16 export, or Q/DQ) decide precision, not builder flags.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes, str(onnx_path)):
        errors = "\n".join(f"  {parser.get_error(i)}" for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser refused {onnx_path}:\n{errors}")
    config = _builder_config(trt, builder, precision, workspace_gib, strongly_typed)
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if input_name not in names:
        raise BuildError(f"the network has no input named {input_name!r} (inputs: {names})")
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(input_name, *profile_shapes(profile, hwc))
    config.add_optimization_profile(trt_profile)

    cache_blob = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    # ignore_mismatch=False: a cache from another GPU/TensorRT is refused rather than silently used.
    if not config.set_timing_cache(cache, False):
        raise BuildError(f"timing cache {timing_cache} does not match this GPU/TensorRT; delete it and rebuild")
    if progress is not None:
        config.progress_monitor = _trt_progress_monitor(trt, progress)
    # Ctrl-C during the (minutes-long, C++) build: Python raises nothing until a callback runs, so flag the
    # cancellation and let the progress monitor ask TensorRT to stop at its next step.
    previous = None
    if progress is not None and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: setattr(progress, "cancelled", True))
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if serialized is None:
        if progress is not None and progress.cancelled:
            raise BuildError("build cancelled")
        raise BuildError("TensorRT failed to build the engine (see its log above)")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(timing_cache, memoryview(config.get_timing_cache().serialize()))
    return bytes(serialized)


def engine_manifest(
    source: ModelManifest,
    engine_path: Path,
    *,
    onnx_path: Path,
    onnx_sha256: str,
    trt_version: str,
    gpu: str,
    compute_capability: str,
    precision: Precision,
    profile: BatchSpec,
    calibration_sha256: str | None,
    calibration_source: str | None,
    build_seconds: float | None,
) -> ModelManifest:
    """The engine's manifest: the ONNX model's description, plus what the engine is bound to."""
    data = source.model_dump()
    data.update(
        format="tensorrt",
        file=engine_path.name,
        sha256=sha256_file(engine_path),
        batch=profile.model_dump(),
        tensorrt=TensorRTInfo(
            version=trt_version,
            gpu=gpu,
            compute_capability=compute_capability,
            precision=precision,
            profile=profile,
            onnx_sha256=onnx_sha256,
            calibration_sha256=calibration_sha256,
            build_seconds=build_seconds,
            onnx_file=str(onnx_path),
            calibration_source=calibration_source,
        ).model_dump(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        producer=PRODUCER,
    )
    return ModelManifest.model_validate(data)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    precision: Precision,
    batch: int,
    calibration: Path | None = None,
    calibration_count: int = 256,
    calibration_method: Literal["percentile", "max"] = "percentile",
    timing_cache: Path | None = None,
    workspace_gib: float = 4.0,
    device: int = 0,
    strongly_typed: bool = False,
    verbose: bool = False,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    progress: BuildProgress | None = None,
) -> ModelManifest:
    """ONNX model (with manifest) -> engine file + engine manifest. Returns the engine manifest."""
    try:
        source = read_manifest(onnx_path)
    except ManifestError as exc:
        raise BuildError(str(exc)) from None
    if source.format != "onnx":
        raise BuildError(f"{onnx_path} is a {source.format} model; the builder takes an exported ONNX model")
    onnx_sha = source.sha256
    model = onnx.load(str(onnx_path))
    hwc = (source.input.height, source.input.width, source.input.channels)
    check_model(model, expect_input=hwc).raise_for_errors()
    profile = batch_profile(batch, source.batch)
    if precision == "int8" and calibration is None:
        raise BuildError("--precision int8 needs --calibration DIR (images from the training data)")
    # The arguments are right; now the environment, before minutes of calibration.
    trt = import_builder()
    set_device(device)
    gpu = device_info(device)

    calibration_sha = None
    if precision == "int8" and calibration is not None:
        files = calibration_files(calibration, calibration_count)
        calibration_sha = calibration_hash(calibration, files, f"{calibration_method}:{len(files)}")
        log(f"calibrating on {len(files)} images from {calibration} ({calibration_method}) with ONNX Runtime (CPU)")
        images = load_calibration_images(files, source)
        model = quantize(model, images, method=calibration_method)
        qdq_path = engine_path.with_name(engine_path.name + ".qdq.onnx")
        onnx.save(model, str(qdq_path))
        log(f"wrote the Q/DQ graph {qdq_path}")
        check_model(model, expect_input=hwc).raise_for_errors()

    log(
        f"building {precision} engine for {gpu.name} (sm {gpu.compute_capability}), TensorRT {trt.__version__}, "
        f"batch {profile.min}..{profile.max} (opt {profile.opt})"
    )
    t0 = time.monotonic()
    blob = build_serialized(
        model.SerializeToString(),
        onnx_path=onnx_path,
        input_name=source.input.name,
        hwc=hwc,
        precision=precision,
        profile=profile,
        timing_cache=timing_cache,
        workspace_gib=workspace_gib,
        strongly_typed=strongly_typed,
        progress=progress if progress is not None else BuildProgress(),
        verbose=verbose,
    )
    seconds = time.monotonic() - t0
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(engine_path, blob)
    manifest = engine_manifest(
        source,
        engine_path,
        onnx_path=onnx_path,
        onnx_sha256=onnx_sha,
        trt_version=trt.__version__,
        gpu=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        profile=profile,
        calibration_sha256=calibration_sha,
        calibration_source=str(calibration) if calibration else None,
        build_seconds=round(seconds, 1),
    )
    write_model_manifest(engine_path, manifest)
    log(f"wrote {engine_path} ({len(blob) / 1e6:.1f} MB) in {seconds:.0f}s")
    return manifest
