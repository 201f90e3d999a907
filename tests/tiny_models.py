"""Tiny but real ONNX models obeying the manifest conventions, built with onnx.helper (no torch), for fast tests.

They are deterministic "bright-spot detectors": a pixel brighter than `threshold` (0..255) is a defect.
- recognizer: uint8 NHWC -> Cast -> NCHW -> normalise -> 32x32 MaxPool -> sigmoid -> block_scores (N, H/32, W/32)
- segmenter:  uint8 NHWC -> ... -> per-pixel logit -> softmax over [background, defect] -> pixel_scores (N,2,H,W)

Options that make them useful for pipeline tests, each done by real graph computation:
- `work`: extra chained 256x256 MatMuls per inference, to make a model measurably slow;
- `poison`: a frame whose top-left pixel equals this value makes inference fail at run time (a Reshape to an
  impossible shape), to exercise the daemon's error path with a genuine ONNX Runtime error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inspector.manifest import ModelManifest, sha256_file, write_manifest
from inspector.preprocess import MEAN_GRAY, STD_GRAY

SIZE = 64


def _normalised(nodes: list, inits: list) -> str:
    """Cast first (TensorRT refuses uint8 intermediates), then NHWC->NCHW and the in-graph normalisation."""
    inits += [
        numpy_helper.from_array(np.array(255 * MEAN_GRAY[0], np.float32), "mean255"),
        numpy_helper.from_array(np.array(255 * STD_GRAY[0], np.float32), "std255"),
    ]
    nodes += [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Sub", ["nchw", "mean255"], ["centred"]),
        helper.make_node("Div", ["centred", "std255"], ["x"]),
    ]
    return "x"


def _logit(nodes: list, inits: list, x: str, threshold: float, out: str) -> None:
    level = (threshold - 255 * MEAN_GRAY[0]) / (255 * STD_GRAY[0])
    inits += [
        numpy_helper.from_array(np.array(level, np.float32), f"{out}_level"),
        numpy_helper.from_array(np.array(8.0, np.float32), f"{out}_gain"),
    ]
    nodes += [
        helper.make_node("Sub", [x, f"{out}_level"], [f"{out}_d"]),
        helper.make_node("Mul", [f"{out}_d", f"{out}_gain"], [out]),
    ]


def _add_work(nodes: list, inits: list, x: str, work: int) -> str:
    """`work` chained MatMuls whose result is multiplied by 0 and added back: real compute, same output."""
    if work <= 0:
        return x
    rng = np.random.default_rng(0)
    inits += [
        numpy_helper.from_array((rng.standard_normal((256, 256)) / 16).astype(np.float32), "w_mat"),
        numpy_helper.from_array(np.ones((1, 256), np.float32), "w_seed"),
        numpy_helper.from_array(np.array(0.0, np.float32), "w_zero"),
    ]
    cur = "w_seed"
    for i in range(work):
        nodes.append(helper.make_node("MatMul", [cur, "w_mat"], [f"w_{i}"]))
        cur = f"w_{i}"
    nodes += [
        helper.make_node("ReduceSum", [cur], ["w_sum"], keepdims=0),
        helper.make_node("Mul", ["w_sum", "w_zero"], ["w_nothing"]),
        helper.make_node("Add", [x, "w_nothing"], [f"{x}_worked"]),
    ]
    return f"{x}_worked"


def _add_poison(nodes: list, inits: list, x: str, poison: int | None) -> str:
    """Reshape x to [k, -1] and back; k is 1 normally and 7 when a frame's top-left pixel equals `poison`."""
    if poison is None:
        return x
    inits += [
        numpy_helper.from_array(np.array([0, 0, 0, 0], np.int64), "p_starts"),
        numpy_helper.from_array(np.array([2**31, 1, 1, 1], np.int64), "p_ends"),
        numpy_helper.from_array(np.array(float(poison), np.float32), "p_value"),
        numpy_helper.from_array(np.array([6], np.int64), "p_six"),
        numpy_helper.from_array(np.array([1], np.int64), "p_one"),
        numpy_helper.from_array(np.array([-1], np.int64), "p_minus1"),
    ]
    nodes += [
        helper.make_node("Slice", ["f", "p_starts", "p_ends"], ["p_corner"]),
        helper.make_node("Equal", ["p_corner", "p_value"], ["p_hit"]),
        helper.make_node("Cast", ["p_hit"], ["p_hitf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["p_hitf"], ["p_any"], keepdims=0),
        helper.make_node("Cast", ["p_any"], ["p_anyi"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["p_anyi", "p_one"], ["p_any1"]),
        helper.make_node("Mul", ["p_any1", "p_six"], ["p_k6"]),
        helper.make_node("Add", ["p_k6", "p_one"], ["p_k"]),
        helper.make_node("Concat", ["p_k", "p_minus1"], ["p_shape"], axis=0),
        helper.make_node("Shape", [x], ["p_orig"]),
        helper.make_node("Reshape", [x, "p_shape"], ["p_flat"]),
        helper.make_node("Reshape", ["p_flat", "p_orig"], [f"{x}_checked"]),
    ]
    return f"{x}_checked"


def _save(nodes, inits, outputs, path: Path, size: int) -> None:
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 1])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests.tiny_models")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _manifest(
    path: Path,
    task: str,
    size: int,
    outputs: list[dict],
    classes: list[str],
    max_batch: int,
    scale: float | None = None,
):
    placing = {"fit": "place", "scale": scale} if scale is not None else {}
    return ModelManifest.model_validate(
        {
            "task": task,
            "format": "onnx",
            "file": path.name,
            "sha256": sha256_file(path),
            "architecture": f"tiny-bright-spot-{task}",
            "input": {"name": "image", "height": size, "width": size, "channels": 1},
            "outputs": outputs,
            "preprocessing": {
                "resize": "area",
                "color": "gray",
                "mean": list(MEAN_GRAY),
                "std": list(STD_GRAY),
                **placing,
            },
            "batch": {"min": 1, "opt": 1, "max": max_batch, "dynamic": True},
            "block_size": 32 if task == "recognizer" else None,
            "classes": classes,
            "opset": 17,
            "producer": "tests/tiny_models.py",
        }
    )


def write_tiny_recognizer(
    path: Path,
    *,
    size: int = SIZE,
    threshold: float = 180,
    work: int = 0,
    poison: int | None = None,
    max_batch: int = 64,
    place_scale: float | None = None,
) -> Path:
    """`place_scale`: a native-resolution model (manifest fit place at that scale) instead of a squashing one."""
    nodes: list = []
    inits: list = []
    x = _normalised(nodes, inits)
    x = _add_work(nodes, inits, x, work)
    nodes.append(helper.make_node("MaxPool", [x], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]))
    _logit(nodes, inits, "pooled", threshold, "logit")
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    nodes += [
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
        helper.make_node("Squeeze", ["prob", "axis1"], ["scores"]),
    ]
    out = _add_poison(nodes, inits, "scores", poison)
    nodes.append(helper.make_node("Identity", [out], ["block_scores"]))
    grid = size // 32
    _save(
        nodes, inits, [helper.make_tensor_value_info("block_scores", TensorProto.FLOAT, ["N", grid, grid])], path, size
    )
    outputs = [{"name": "block_scores", "shape": ["N", grid, grid], "meaning": "P(block has a bright spot)"}]
    write_manifest(path, _manifest(path, "recognizer", size, outputs, ["normal", "defect"], max_batch, place_scale))
    return path


def write_tiny_segmenter(
    path: Path, *, size: int = SIZE, threshold: float = 180, work: int = 0, max_batch: int = 64
) -> Path:
    nodes: list = []
    inits: list = []
    x = _normalised(nodes, inits)
    x = _add_work(nodes, inits, x, work)
    _logit(nodes, inits, x, threshold, "logit")
    inits.append(numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "zero_logit"))
    nodes += [
        helper.make_node("Mul", [x, "zero_logit"], ["bg"]),  # a zero map the shape of x
        helper.make_node("Concat", ["bg", "logit"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], ["pixel_scores"], axis=1),
    ]
    _save(
        nodes,
        inits,
        [helper.make_tensor_value_info("pixel_scores", TensorProto.FLOAT, ["N", 2, size, size])],
        path,
        size,
    )
    outputs = [{"name": "pixel_scores", "shape": ["N", 2, size, size], "meaning": "P(background), P(bright spot)"}]
    write_manifest(path, _manifest(path, "segmenter", size, outputs, ["background", "defect"], max_batch))
    return path


def write_tiny_models(folder: Path, **options) -> tuple[Path, Path]:
    """Write recognizer.onnx and segmenter.onnx (+ manifests) into `folder`. Options: size, threshold, work,
    poison (recognizer only), max_batch."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seg_options = {k: v for k, v in options.items() if k != "poison"}
    return (
        write_tiny_recognizer(folder / "recognizer.onnx", **options),
        write_tiny_segmenter(folder / "segmenter.onnx", **seg_options),
    )
