"""TensorRT-compatibility check of ONNX graphs, before anything reaches a GPU.

`inspector-build-engine` runs it first (a build takes minutes and its parser errors are terse), CI runs it on
the demo models and on a freshly exported ResNet-50 recognizer and segmenter, and it is a CLI:

    python -m inspector.build.onnx_check engines/demo/*.onnx

What is checked, each against TensorRT 10.x's ONNX parser:
- the default-domain opset lies in the parser's range, and no other operator domain is used (no plugins here);
- every operator is in the parser's support matrix, with the element type of its first input among the types
  listed for it (UINT8 only as a network input feeding a Cast, as TensorRT allows);
- the documented per-operator restrictions that an exported CNN can actually hit (Resize modes, Q/DQ zero
  points, `axes` that must be initializers, pooling dilations, 2D/3D convolutions, TopK's K);
- the model input is the manifest's convention, uint8 NHWC, with static H, W and C (only the batch dimension may
  be dynamic: the engine's optimization profile covers the batch, not the image size), and the outputs'
  non-batch dimensions are static after shape inference.

Source of the operator table: onnx/onnx-tensorrt, docs/operators.md at tag 10.1-GA (commit 96e7811, June 2024),
"TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20". Operators marked N there are
absent from the table. Later 10.x releases only add operators, so a graph accepted here parses on any TRT 10.x.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from inspector.manifest import ModelManifest

TRT_OPSET_MIN = 9
TRT_OPSET_MAX = 20
TRT_OPERATOR_SOURCE = "onnx/onnx-tensorrt docs/operators.md, tag 10.1-GA (commit 96e7811)"

# Operator -> element types its first input may have (names as in the support matrix). Copied from the source
# above; keep it a literal table so a reviewer can diff it against the next release's docs/operators.md.
TRT10_OPERATORS: dict[str, tuple[str, ...]] = {
    "Abs": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Acos": ("FP32", "FP16", "BF16"),
    "Acosh": ("FP32", "FP16", "BF16"),
    "Add": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "And": ("BOOL",),
    "ArgMax": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ArgMin": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Asin": ("FP32", "FP16", "BF16"),
    "Asinh": ("FP32", "FP16", "BF16"),
    "Atan": ("FP32", "FP16", "BF16"),
    "Atanh": ("FP32", "FP16", "BF16"),
    "AveragePool": ("FP32", "FP16", "BF16"),
    "BatchNormalization": ("FP32", "FP16", "BF16"),
    "Cast": ("FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"),
    "CastLike": ("FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"),
    "Ceil": ("FP32", "FP16", "BF16"),
    "Celu": ("FP32", "FP16", "BF16"),
    "Clip": ("FP32", "FP16", "BF16"),
    "Concat": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Constant": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "ConstantOfShape": ("FP32", "FP16", "BF16", "INT32", "INF64", "BOOL"),
    "Conv": ("FP32", "FP16", "BF16"),
    "ConvTranspose": ("FP32", "FP16", "BF16"),
    "Cos": ("FP32", "FP16", "BF16"),
    "Cosh": ("FP32", "FP16", "BF16"),
    "CumSum": ("FP32", "FP16", "BF16"),
    "DeformConv": ("FP32", "FP16"),
    "DepthToSpace": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "DequantizeLinear": ("INT8", "FP8", "INT4"),
    "Div": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Dropout": ("FP32", "FP16", "BF16"),
    "Einsum": ("FP32", "FP16", "BF16"),
    "Elu": ("FP32", "FP16", "BF16"),
    "Equal": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Erf": ("FP32", "FP16", "BF16"),
    "Exp": ("FP32", "FP16", "BF16"),
    "Expand": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "EyeLike": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Flatten": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Floor": ("FP32", "FP16", "BF16"),
    "Gather": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "GatherElements": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "GatherND": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Gelu": ("FP32", "FP16", "BF16", "INT8", "INT32", "INT64"),
    "Gemm": ("FP32", "FP16", "BF16"),
    "GlobalAveragePool": ("FP32", "FP16", "BF16"),
    "GlobalLpPool": ("FP32", "FP16", "BF16"),
    "GlobalMaxPool": ("FP32", "FP16", "BF16"),
    "Greater": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "GreaterOrEqual": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "GridSample": ("FP32", "FP16"),
    "GroupNormalization": ("FP32", "FP16", "BF16"),
    "GRU": ("FP32", "FP16", "BF16"),
    "HardSigmoid": ("FP32", "FP16", "BF16"),
    "HardSwish": ("FP32", "FP16", "BF16"),
    "Hardmax": ("FP32", "FP16", "BF16"),
    "Identity": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "If": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "ImageScaler": ("FP32", "FP16", "BF16"),
    "InstanceNormalization": ("FP32", "FP16", "BF16"),
    "IsInf": ("FP32", "FP16", "BF16"),
    "IsNaN": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "LayerNormalization": ("FP32", "FP16", "BF16"),
    "LeakyRelu": ("FP32", "FP16", "BF16"),
    "Less": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "LessOrEqual": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Log": ("FP32", "FP16", "BF16"),
    "LogSoftmax": ("FP32", "FP16", "BF16"),
    "Loop": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "LRN": ("FP32", "FP16", "BF16"),
    "LSTM": ("FP32", "FP16", "BF16"),
    "LpNormalization": ("FP32", "FP16", "BF16"),
    "LpPool": ("FP32", "FP16", "BF16"),
    "MatMul": ("FP32", "FP16", "BF16"),
    "Max": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "MaxPool": ("FP32", "FP16", "BF16"),
    "Mean": ("FP32", "FP16", "BF16", "FP8", "INT32", "INT64"),
    "MeanVarianceNormalization": ("FP32", "FP16", "BF16"),
    "Min": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Mish": ("FP32", "FP16"),
    "Mod": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Mul": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Neg": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "NonMaxSuppression": ("FP32", "FP16"),
    "NonZero": ("FP32", "FP16"),
    "Not": ("BOOL",),
    "OneHot": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Or": ("BOOL",),
    "Pad": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ParametricSoftplus": ("FP32", "FP16", "BF16"),
    "Pow": ("FP32", "FP16", "BF16"),
    "PRelu": ("FP32", "FP16", "BF16"),
    "QuantizeLinear": ("FP32", "FP16", "BF16"),
    "RandomNormal": ("FP32", "FP16", "BF16"),
    "RandomNormalLike": ("FP32", "FP16", "BF16"),
    "RandomUniform": ("FP32", "FP16", "BF16"),
    "RandomUniformLike": ("FP32", "FP16", "BF16"),
    "Range": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Reciprocal": ("FP32", "FP16", "BF16"),
    "ReduceL1": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceL2": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceLogSum": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceLogSumExp": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceMax": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceMean": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceMin": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceProd": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceSum": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceSumSquare": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Relu": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Reshape": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Resize": ("FP32", "FP16", "BF16"),
    "ReverseSequence": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "RNN": ("FP32", "FP16", "BF16"),
    "RoiAlign": ("FP32", "FP16"),
    "Round": ("FP32", "FP16", "BF16"),
    "ScaledTanh": ("FP32", "FP16", "BF16"),
    "Scan": ("FP32", "FP16", "BF16"),
    "Scatter": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ScatterElements": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ScatterND": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Selu": ("FP32", "FP16", "BF16", ""),
    "Shape": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Shrink": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Sigmoid": ("FP32", "FP16", "BF16"),
    "Sign": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Sin": ("FP32", "FP16", "BF16"),
    "Sinh": ("FP32", "FP16", "BF16"),
    "Size": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Slice": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Softmax": ("FP32", "FP16", "BF16"),
    "Softplus": ("FP32", "FP16", "BF16"),
    "Softsign": ("FP32", "FP16", "BF16"),
    "SpaceToDepth": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Split": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Sqrt": ("FP32", "FP16", "BF16"),
    "Squeeze": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Sub": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Sum": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Tan": ("FP32", "FP16", "BF16"),
    "Tanh": ("FP32", "FP16", "BF16"),
    "ThresholdedRelu": ("FP32", "FP16", "BF16"),
    "Tile": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "TopK": ("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Transpose": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Trilu": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Unsqueeze": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Upsample": ("FP32", "FP16", "BF16"),
    "Where": ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Xor": ("BOOL",),
}

_TYPE_NAMES: dict[int, str] = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.DOUBLE: "DOUBLE",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.INT4: "INT4",
}
# "TensorRT supports the following ONNX data types: DOUBLE, FLOAT32, FLOAT16, BFLOAT16, INT32, INT64, FP8, INT8,
# INT4, UINT8, and BOOL" (DOUBLE is cast down to FLOAT with clamping) — what a network input/output may be.
_IO_TYPES = {"FP32", "FP16", "BF16", "INT32", "INT64", "INT8", "UINT8", "BOOL"}

_RESIZE_COORDINATE_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
_REDUCE_OPS = {
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
}
# op -> index of the input that "must be an initializer" (a build-time constant) in the support matrix.
_CONSTANT_INPUTS: dict[str, tuple[int, str]] = {
    **{op: (1, "axes") for op in _REDUCE_OPS},
    "Slice": (3, "axes"),
    "Squeeze": (1, "axes"),
    "Unsqueeze": (1, "axes"),
    "Pad": (3, "axes"),
    "CumSum": (1, "axis"),
}


class OnnxCompatibilityError(ValueError):
    """An ONNX graph that TensorRT's parser would refuse (or mis-handle); the message lists every reason."""


@dataclass(frozen=True)
class Finding:
    severity: Literal["error", "warning"]
    where: str  # "opset", "input image", "node Conv_12 (Conv)", ...
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


@dataclass
class CheckReport:
    source: str
    opset: int | None
    findings: list[Finding] = field(default_factory=list)
    operators: dict[str, int] = field(default_factory=dict)  # op type -> count, for the report

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        verdict = "OK" if self.ok else f"{len(self.errors)} error(s)"
        ops = ", ".join(f"{op}×{n}" for op, n in sorted(self.operators.items()))
        lines = [f"{self.source}: opset {self.opset}: {verdict} for TensorRT 10.x ({TRT_OPERATOR_SOURCE})"]
        lines += [f"  {f}" for f in self.findings]
        lines.append(f"  operators: {ops}")
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        if not self.ok:
            raise OnnxCompatibilityError(
                f"{self.source} cannot be built into a TensorRT engine:\n" + "\n".join(f"  {e}" for e in self.errors)
            )


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _node_where(node: onnx.NodeProto) -> str:
    return f"node {node.name or '<unnamed>'} ({node.op_type})"


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


class _Context:
    """What the node checks need to know about tensors: element types and constant values."""

    def __init__(self, graph: onnx.GraphProto):
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int | str | None] | None] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.graph_outputs: set[str] = {o.name for o in graph.output}
        self.add_graph(graph)

    def add_graph(self, graph: onnx.GraphProto) -> None:
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            if vi.type.tensor_type.elem_type:
                self.types[vi.name] = vi.type.tensor_type.elem_type
                self.shapes[vi.name] = _dims(vi)
        for init in graph.initializer:
            self.types[init.name] = init.data_type
            self.shapes[init.name] = list(init.dims)
            self.constants[init.name] = numpy_helper.to_array(init)
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                value = _attr(node, "value", None)
                if value is not None:
                    self.constants[node.output[0]] = numpy_helper.to_array(value)
                    continue
                for key in ("value_float", "value_floats", "value_int", "value_ints"):
                    v = _attr(node, key, None)
                    if v is not None:
                        self.constants[node.output[0]] = np.asarray(v)


def _resize_rules(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    mode = _text(_attr(node, "mode", "nearest"))
    coord = _text(_attr(node, "coordinate_transformation_mode", "half_pixel"))
    nearest = _text(_attr(node, "nearest_mode", "round_prefer_floor"))
    errors = []
    if mode not in _RESIZE_MODES:
        errors.append(f"Resize mode {mode!r} unsupported (only {sorted(_RESIZE_MODES)})")
    if coord not in _RESIZE_COORDINATE_MODES:
        errors.append(f"Resize coordinate_transformation_mode {coord!r} unsupported")
    if mode == "nearest" and nearest not in _RESIZE_NEAREST_MODES:
        errors.append(f"Resize nearest_mode {nearest!r} unsupported")
    if _attr(node, "antialias", 0):
        errors.append("Resize antialias is not supported")
    if _text(_attr(node, "keep_aspect_ratio_policy", "stretch")) != "stretch":
        errors.append("Resize keep_aspect_ratio_policy must be 'stretch'")
    return errors


def _qdq_rules(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    if len(node.input) <= 2 or not node.input[2]:
        return []
    zp = ctx.constants.get(node.input[2])
    if zp is None:
        return ["zero point must be a constant (TensorRT supports symmetric quantization only)"]
    if np.any(zp.astype(np.int64) != 0):
        return ["zero point must be 0 (TensorRT supports symmetric quantization only)"]
    return []


def _pool_rules(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    errors = []
    dilations = _attr(node, "dilations", None)
    if dilations and any(d != 1 for d in dilations):
        errors.append("pooling `dilations` must be empty or all ones")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        errors.append("MaxPool's Indices output is unsupported")
    return errors


def _topk_rules(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    errors = []
    if _attr(node, "sorted", 1) != 1:
        errors.append("TopK `sorted` must be 1")
    k = ctx.constants.get(node.input[1]) if len(node.input) > 1 else None
    if k is not None and int(np.asarray(k).reshape(-1)[0]) >= 3840:
        errors.append("TopK K must be less than 3840")
    return errors


def _layernorm_rules(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    return ["only LayerNormalization's first output is supported"] if len([o for o in node.output if o]) > 1 else []


def _dropout_rules(node: onnx.NodeProto, ctx: _Context) -> list[str]:
    if len(node.input) <= 2 or not node.input[2]:
        return []
    training = ctx.constants.get(node.input[2])
    if training is None or bool(np.asarray(training).reshape(-1)[0]):
        return ["Dropout `training_mode` must be an initializer that is False"]
    return []


# The documented per-operator restrictions an exported CNN can hit, one function per operator family.
_OPERATOR_RULES: dict[str, Callable[[onnx.NodeProto, _Context], list[str]]] = {
    "Resize": _resize_rules,
    "QuantizeLinear": _qdq_rules,
    "DequantizeLinear": _qdq_rules,
    "AveragePool": _pool_rules,
    "MaxPool": _pool_rules,
    "LpPool": _pool_rules,
    "TopK": _topk_rules,
    "LayerNormalization": _layernorm_rules,
    "Dropout": _dropout_rules,
}


def _type_findings(node: onnx.NodeProto, ctx: _Context, supported: tuple[str, ...], where: str) -> list[Finding]:
    """The first input's element type, which is what the matrix's "Supported Types" column describes, and the
    parser's own rule (ModelImporter.cpp): "TensorRT does not support UINT8 types for intermediate tensors!"
    (x.permute(0, 3, 1, 2).float() exports a uint8 Transpose; x.float().permute(0, 3, 1, 2) is fine)."""
    found = []
    if node.input and node.input[0] and node.input[0] in ctx.types:
        tname = _TYPE_NAMES.get(ctx.types[node.input[0]], f"type#{ctx.types[node.input[0]]}")
        if tname == "DOUBLE":
            found.append(Finding("warning", where, "DOUBLE input: TensorRT casts it to FP32, clamping at ±FLT_MAX"))
        elif tname not in supported:
            hint = "; cast the uint8 image to float first" if tname == "UINT8" else ""
            found.append(
                Finding(
                    "error", where, f"input type {tname} not supported; TensorRT accepts {', '.join(supported)}{hint}"
                )
            )
    for out in node.output:
        if out and ctx.types.get(out) == TensorProto.UINT8 and out not in ctx.graph_outputs:
            found.append(
                Finding(
                    "error",
                    where,
                    f"produces the UINT8 intermediate tensor {out!r}: TensorRT allows UINT8 only as a network "
                    "input/output",
                )
            )
    return found


def _check_node(node: onnx.NodeProto, ctx: _Context, opset: int) -> list[Finding]:
    where = _node_where(node)
    if node.domain not in ("", "ai.onnx"):
        message = f"operator domain {node.domain!r} is not ONNX's default domain; TensorRT would need a plugin for it"
        return [Finding("error", where, message)]
    op = node.op_type
    supported = TRT10_OPERATORS.get(op)
    if supported is None:
        return [Finding("error", where, "not supported by TensorRT's ONNX parser")]
    found = _type_findings(node, ctx, supported, where)
    errors: list[str] = []
    if op in _CONSTANT_INPUTS:
        index, what = _CONSTANT_INPUTS[op]
        # Before opset 13 (Squeeze/Unsqueeze/ReduceSum) or 18 (other reductions, Pad axes) these are attributes.
        if len(node.input) > index and node.input[index] and node.input[index] not in ctx.constants:
            errors.append(f"`{what}` must be an initializer or Constant (TensorRT needs it at build time)")
    rules = _OPERATOR_RULES.get(op)
    if rules is not None:
        errors += rules(node, ctx)
    return found + [Finding("error", where, e) for e in errors]


def _check_io(graph: onnx.GraphProto, ctx: _Context, expect_input: tuple[int, int, int] | None) -> list[Finding]:
    found: list[Finding] = []
    initializers = {i.name for i in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in initializers]
    if len(inputs) != 1:
        found.append(
            Finding("error", "inputs", f"expected one image input, found {len(inputs)}: {[i.name for i in inputs]}")
        )
    for vi in inputs:
        where = f"input {vi.name}"
        elem = _TYPE_NAMES.get(vi.type.tensor_type.elem_type, str(vi.type.tensor_type.elem_type))
        if elem != "UINT8":
            found.append(Finding("error", where, f"dtype {elem}, but the model convention is uint8 NHWC"))
        dims = _dims(vi)
        if dims is None or len(dims) != 4:
            found.append(Finding("error", where, f"rank must be 4 (N, H, W, C), got shape {dims}"))
            continue
        batch, *hwc = dims
        if batch is None or (isinstance(batch, int) and batch <= 0):
            found.append(Finding("error", where, "batch dimension has neither a size nor a name"))
        dynamic = [name for name, d in zip("HWC", hwc, strict=True) if not isinstance(d, int) or d <= 0]
        if dynamic:
            found.append(
                Finding(
                    "error",
                    where,
                    f"{'/'.join(dynamic)} must be static (shape {dims}): the engine's optimization profile "
                    "covers only the batch dimension; export with a fixed image size",
                )
            )
        elif expect_input is not None and tuple(hwc) != tuple(expect_input):
            found.append(Finding("error", where, f"H, W, C are {tuple(hwc)}, the manifest says {tuple(expect_input)}"))
    for vi in graph.output:
        where = f"output {vi.name}"
        elem = _TYPE_NAMES.get(vi.type.tensor_type.elem_type, str(vi.type.tensor_type.elem_type))
        if elem not in _IO_TYPES:
            found.append(Finding("error", where, f"dtype {elem} cannot be a TensorRT network output"))
        dims = ctx.shapes.get(vi.name) or _dims(vi)
        if not dims:
            found.append(Finding("warning", where, "shape unknown after shape inference"))
        elif any(not isinstance(d, int) or d <= 0 for d in dims[1:]):
            found.append(
                Finding("error", where, f"non-batch dimensions must be static (shape {dims}); check the export")
            )
    return found


def _walk(graph: onnx.GraphProto, ctx: _Context, opset: int, report: CheckReport) -> None:
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        report.operators[key] = report.operators.get(key, 0) + 1
        report.findings += _check_node(node, ctx, opset)
        for sub in _subgraphs(node):
            ctx.add_graph(sub)
            _walk(sub, ctx, opset, report)


def check_model(
    model: onnx.ModelProto | str | Path,
    *,
    expect_input: tuple[int, int, int] | None = None,
) -> CheckReport:
    """Check an ONNX model (or file) against TensorRT 10.x's ONNX parser. `expect_input` is (H, W, C)."""
    if isinstance(model, (str, Path)):
        source, model = str(model), onnx.load(str(model))
    else:
        source = model.graph.name or "<model>"
    report = CheckReport(source=source, opset=None)
    if model.functions:
        # Exporters may wrap modules in local functions; TensorRT's parser inlines them, so check the inlined graph.
        from onnx import inliner

        model = inliner.inline_local_functions(model)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    report.opset = opset
    if opset is None:
        report.findings.append(Finding("error", "opset", "no default-domain opset import"))
        return report
    if not TRT_OPSET_MIN <= opset <= TRT_OPSET_MAX:
        report.findings.append(
            Finding(
                "error",
                "opset",
                f"opset {opset} is outside TensorRT 10.x's supported range {TRT_OPSET_MIN}..{TRT_OPSET_MAX}",
            )
        )
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # a broken graph is itself a finding, not a crash of the checker
        report.findings.append(Finding("warning", "shape inference", f"failed ({exc}); types and shapes unchecked"))
        inferred = model
    ctx = _Context(inferred.graph)
    report.findings += _check_io(inferred.graph, ctx, expect_input)
    _walk(inferred.graph, ctx, opset, report)
    return report


def check_model_for_manifest(model_path: str | Path, manifest: ModelManifest) -> CheckReport:
    """Check an exported model file against TensorRT and against the input its manifest declares."""
    spec = manifest.input
    return check_model(model_path, expect_input=(spec.height, spec.width, spec.channels))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inspector.build.onnx_check",
        description="Check ONNX models for TensorRT 10.x compatibility (operators, opset, static shapes, dtypes).",
    )
    parser.add_argument("models", nargs="+", type=Path, help="ONNX files")
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    failed = False
    for path in args.models:
        expect = None
        try:
            from inspector.manifest import ManifestError, read_manifest

            manifest = read_manifest(path, verify_hash=False)
            expect = (manifest.input.height, manifest.input.width, manifest.input.channels)
        except ManifestError:
            pass  # a bare ONNX file is still worth checking
        try:
            report = check_model(path, expect_input=expect)
        except Exception as exc:
            print(f"{path}: cannot be read as ONNX: {exc}", file=sys.stderr)
            failed = True
            continue
        print(report.format())
        failed |= not report.ok or (args.strict and bool(report.warnings))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
