"""`inspector-build-engine`: exported ONNX model -> TensorRT engine + engine manifest.

    inspector-build-engine engines/recognizer.onnx --precision fp16 --batch 8
    inspector-build-engine engines/segmenter.onnx --precision int8 --batch 4 --calibration data/calib/

What it does, in order:
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

INT8: why explicit Q/DQ and not a calibrator. TensorRT 10 deprecated implicit quantization (IInt8Calibrator,
IInt8EntropyCalibrator2, ... and the per-tensor dynamic ranges they set); explicit quantization — Q/DQ nodes in
the ONNX graph — is the supported route, and the same graph runs in ONNX Runtime, so the quantized model can be
checked on a CPU. Scales come from a calibration set taken from the training data, run through the float model
in ONNX Runtime on the CPU:
- weights: per-output-channel symmetric INT8 (stored as INT8 initializers + DequantizeLinear), max-abs;
- activations: per-tensor symmetric INT8 on every Conv input, scale from the 99.99th percentile of |x| over the
  calibration set (a histogram merged across batches; "max" is available) — percentile rather than max because
  one hot pixel should not waste the 8 bits of every frame;
- zero points are 0 (TensorRT supports symmetric quantization only); the head convolutions (those with no
  convolution after them: the score logits) stay in floating point, which costs little time and keeps the
  scores the decision thresholds act on close to the float model's.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inspector.manifest import BatchSpec, ManifestError, ModelManifest, TensorRTInfo, read_manifest, sha256_file
from inspector.manifest import write_manifest as write_model_manifest

Precision = Literal["fp32", "fp16", "int8"]
PRODUCER = "inspector-build-engine 1"
IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff"}
QUANTIZED_OPS = ("Conv", "ConvTranspose")


class BuildError(Exception):
    """An engine cannot be built; the message says why."""


# ------------------------------------------------------------------------------------------ profile & names


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


# ------------------------------------------------------------------------------------------ calibration


def calibration_files(folder: Path, count: int) -> list[Path]:
    """Up to `count` images from `folder` (recursively), evenly spread over the sorted list: deterministic, and
    not just the first part of a folder that is sorted by date or class."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise BuildError(f"no calibration images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    if len(files) > count:
        picks = np.linspace(0, len(files) - 1, count).round().astype(int)
        files = [files[i] for i in sorted(set(picks.tolist()))]
    return files


def calibration_hash(folder: Path, files: Sequence[Path], method: str) -> str:
    """SHA-256 over the chosen files' names and contents and the method: the same set gives the same hash."""
    h = hashlib.sha256(f"{method}\n".encode())
    for f in files:
        h.update(f"{f.relative_to(folder).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def load_calibration_images(files: Sequence[Path], manifest: ModelManifest) -> np.ndarray:
    """Images -> (n, H, W, C) uint8 network inputs through `inspector.preprocess` (the one preprocessing)."""
    import cv2

    from inspector.preprocess import resize_image

    size = (manifest.input.height, manifest.input.width)
    out = np.zeros((len(files), *size, manifest.input.channels), np.uint8)
    for i, f in enumerate(files):
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise BuildError(f"cannot read calibration image {f}")
        if img.dtype != np.uint8:
            raise BuildError(f"calibration image {f} is {img.dtype}, not 8-bit")
        fmt = "mono8" if img.ndim == 2 or img.shape[2] == 1 else "bgr8"
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[:, :, :3]
        out[i] = resize_image(
            img, size, pixel_format=fmt, color=manifest.preprocessing.color, interpolation=manifest.preprocessing.resize
        )
    return out


class _AbsHistogram:
    """Histogram of |x| over a range that grows as larger values arrive (old counts are re-binned)."""

    BINS = 2048

    def __init__(self) -> None:
        self.range = 0.0
        self.counts = np.zeros(self.BINS, np.float64)

    def add(self, values: np.ndarray) -> None:
        a = np.abs(values.astype(np.float32, copy=False)).ravel()
        top = float(a.max(initial=0.0))
        if top > self.range:
            if self.range > 0:
                centers = (np.arange(self.BINS) + 0.5) * (self.range / self.BINS)
                new = np.zeros(self.BINS, np.float64)
                np.add.at(new, np.minimum((centers / top * self.BINS).astype(int), self.BINS - 1), self.counts)
                self.counts = new
            self.range = top
        if self.range > 0:
            idx = np.minimum((a * (self.BINS / self.range)).astype(np.int64), self.BINS - 1)
            self.counts += np.bincount(idx, minlength=self.BINS)

    def percentile(self, q: float) -> float:
        total = self.counts.sum()
        if total == 0 or self.range == 0:
            return 0.0
        k = int(np.searchsorted(np.cumsum(self.counts), total * q / 100.0))
        return (min(k, self.BINS - 1) + 1) * self.range / self.BINS


def _quantizable_nodes(model: onnx.ModelProto, quantize_heads: bool) -> list[onnx.NodeProto]:
    """Conv/ConvTranspose nodes with constant weights; without `quantize_heads`, those with another convolution
    downstream (the last convolutions produce the scores and stay in floating point)."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    candidates = [n for n in graph.node if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in inits]
    if quantize_heads:
        return candidates

    def has_conv_downstream(node: onnx.NodeProto) -> bool:
        seen: set[int] = set()
        stack = [c for out in node.output for c in consumers.get(out, [])]
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.op_type in QUANTIZED_OPS:
                return True
            stack += [c for out in n.output for c in consumers.get(out, [])]
        return False

    return [n for n in candidates if has_conv_downstream(n)]


def activation_ranges(
    model: onnx.ModelProto,
    images: np.ndarray,
    tensors: Sequence[str],
    *,
    method: Literal["percentile", "max"] = "percentile",
    percentile: float = 99.99,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Run the float model in ONNX Runtime (CPU) over `images` and return each tensor's calibrated |x| range."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in present:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    hist = {t: _AbsHistogram() for t in tensors}
    amax = dict.fromkeys(tensors, 0.0)
    for i in range(len(images)):
        values = session.run(list(tensors), {input_name: images[i : i + 1]})
        for name, v in zip(tensors, values, strict=True):
            amax[name] = max(amax[name], float(np.abs(v).max(initial=0.0)))
            if method == "percentile":
                hist[name].add(v)
        if progress:
            progress(i + 1, len(images))
    if method == "max":
        return amax
    return {t: hist[t].percentile(percentile) or amax[t] for t in tensors}


def insert_qdq(model: onnx.ModelProto, ranges: dict[str, float], *, quantize_heads: bool = False) -> onnx.ModelProto:
    """A copy of `model` with explicit INT8 Q/DQ on the inputs and weights of its convolutions.

    Activations: QuantizeLinear -> DequantizeLinear (per tensor, scale = range / 127, zero point 0), shared by
    all convolutions that read the same tensor. Weights: INT8 initializer -> DequantizeLinear, per output
    channel (axis 0 for Conv, 1 for ConvTranspose), narrow range [-127, 127] as TensorRT recommends.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise BuildError(f"INT8 needs opset >= 13 (per-channel DequantizeLinear); the model has opset {opset}")
    inits = {i.name: i for i in graph.initializer}
    nodes = _quantizable_nodes(out, quantize_heads)
    new_nodes: dict[int, list[onnx.NodeProto]] = {}  # insert before the consuming node, keeping topological order
    dq_of: dict[str, str] = {}
    zero = numpy_helper.from_array(np.zeros((), np.int8), "qdq_zero_point_int8")
    graph.initializer.append(zero)
    for node in nodes:
        before: list[onnx.NodeProto] = []
        x = node.input[0]
        if x not in dq_of:
            if x not in ranges:
                raise BuildError(f"no calibrated range for tensor {x!r} (input of {node.name})")
            scale_name = f"{x}_act_scale"
            scale = max(float(ranges[x]), 1e-8) / 127.0
            graph.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), scale_name))
            q, dq = f"{x}_q", f"{x}_dq"
            before += [
                helper.make_node("QuantizeLinear", [x, scale_name, zero.name], [q], name=f"{x}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [q, scale_name, zero.name], [dq], name=f"{x}_DequantizeLinear"),
            ]
            dq_of[x] = dq
        w_init = inits[node.input[1]]
        w = numpy_helper.to_array(w_init).astype(np.float32)
        axis = 0 if node.op_type == "Conv" else 1
        reduce_axes = tuple(a for a in range(w.ndim) if a != axis)
        w_amax = np.abs(w).max(axis=reduce_axes)
        w_scale = np.where(w_amax > 0, w_amax / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        w_q = np.clip(np.rint(w / w_scale.reshape(shape)), -127, 127).astype(np.int8)
        base = f"{node.name or node.output[0]}_{w_init.name}"
        graph.initializer.append(numpy_helper.from_array(w_q, f"{base}_int8"))
        graph.initializer.append(numpy_helper.from_array(w_scale, f"{base}_w_scale"))
        graph.initializer.append(numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), f"{base}_w_zero_point"))
        before.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{base}_int8", f"{base}_w_scale", f"{base}_w_zero_point"],
                [f"{base}_dq"],
                name=f"{base}_DequantizeLinear",
                axis=axis,
            )
        )
        node.input[0] = dq_of[x]
        node.input[1] = f"{base}_dq"
        new_nodes[id(node)] = before
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        ordered += new_nodes.get(id(node), [])
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    # Float weights no longer referenced (replaced by their INT8 copies) would only bloat the file.
    used = {name for n in graph.node for name in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(out)
    return out


def quantize(
    model: onnx.ModelProto,
    images: np.ndarray,
    *,
    method: Literal["percentile", "max"] = "percentile",
    percentile: float = 99.99,
    quantize_heads: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> onnx.ModelProto:
    """Calibrate on `images` ((n, H, W, C) uint8) and return the Q/DQ model."""
    tensors = sorted({n.input[0] for n in _quantizable_nodes(model, quantize_heads)})
    ranges = activation_ranges(model, images, tensors, method=method, percentile=percentile, progress=progress)
    return insert_qdq(model, ranges, quantize_heads=quantize_heads)


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

    class Monitor(trt.IProgressMonitor):
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
    try:
        import tensorrt as trt
    except ImportError:
        raise BuildError(
            "building engines needs TensorRT's builder (pip install tensorrt, or the TensorRT tarball); "
            "tensorrt-lean can only run engines"
        ) from None
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

    shapes = profile_shapes(profile, hwc)
    trt_profile = builder.create_optimization_profile()
    found = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name == input_name:
            trt_profile.set_shape(tensor.name, *shapes)
            found = True
    if not found:
        raise BuildError(f"the network has no input named {input_name!r}")
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
    from inspector.backends.gpu_memory import device_info, set_device
    from inspector.backends.onnx_check import check_model

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

    calibration_sha = None
    if precision == "int8":
        if calibration is None:
            raise BuildError("--precision int8 needs --calibration DIR (images from the training data)")
        files = calibration_files(calibration, calibration_count)
        calibration_sha = calibration_hash(calibration, files, f"{calibration_method}:{len(files)}")
        log(f"calibrating on {len(files)} images from {calibration} ({calibration_method}) with ONNX Runtime (CPU)")
        images = load_calibration_images(files, source)
        model = quantize(model, images, method=calibration_method)
        qdq_path = engine_path.with_name(engine_path.name + ".qdq.onnx")
        onnx.save(model, str(qdq_path))
        log(f"wrote the Q/DQ graph {qdq_path}")
        check_model(model, expect_input=hwc).raise_for_errors()

    set_device(device)
    gpu = device_info(device)
    import tensorrt as trt

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="inspector-build-engine",
        description="Build a TensorRT engine (FP32/FP16/INT8) from an exported ONNX model and its manifest.",
    )
    parser.add_argument("onnx", type=Path, help="exported ONNX model (its manifest lies beside it)")
    parser.add_argument("--output", "-o", type=Path, help="engine file (default: MODEL.PRECISION.bBATCH.engine)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    parser.add_argument("--batch", type=int, default=4, help="largest batch: the config's pipeline.batch_size")
    parser.add_argument("--calibration", type=Path, help="INT8: folder of calibration images (training data)")
    parser.add_argument("--calibration-count", type=int, default=256, help="INT8: images used (evenly spread)")
    parser.add_argument("--calibration-method", choices=["percentile", "max"], default="percentile")
    parser.add_argument(
        "--timing-cache",
        type=Path,
        default=Path(os.environ.get("INSPECTOR_TIMING_CACHE", "~/.cache/inspector/tensorrt.timing-cache")),
        help="tactic timing cache kept between builds (default ~/.cache/inspector/tensorrt.timing-cache)",
    )
    parser.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit")
    parser.add_argument("--device", type=int, default=0, help="CUDA device ordinal")
    parser.add_argument("--strongly-typed", action="store_true", help="let the graph's types decide precision")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's INFO log")
    args = parser.parse_args(argv)
    engine = args.output or default_engine_path(args.onnx, args.precision, args.batch)
    progress = BuildProgress()
    try:
        build_engine(
            args.onnx,
            engine,
            precision=args.precision,
            batch=args.batch,
            calibration=args.calibration,
            calibration_count=args.calibration_count,
            calibration_method=args.calibration_method,
            timing_cache=args.timing_cache.expanduser(),
            workspace_gib=args.workspace_gib,
            device=args.device,
            strongly_typed=args.strongly_typed,
            verbose=args.verbose,
            progress=progress,
        )
    except KeyboardInterrupt:
        progress.cancelled = True
        print("\ninspector-build-engine: cancelled", file=sys.stderr)
        return 130
    except Exception as exc:
        from inspector.backends import BackendError
        from inspector.backends.onnx_check import OnnxCompatibilityError

        if isinstance(exc, (BuildError, BackendError, OnnxCompatibilityError)):
            print(f"inspector-build-engine: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
