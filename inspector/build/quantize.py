"""INT8 for TensorRT: a calibration set from the training data and an explicitly quantized (Q/DQ) ONNX graph.

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

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inspector.build import BuildError
from inspector.manifest import ModelManifest, sha256_file

IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff"}
QUANTIZED_OPS = ("Conv", "ConvTranspose")


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
