"""Small ONNX models with manifests, for the GPU backend tests (written with onnx.helper: no torch needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inspector.manifest import (
    BatchSpec,
    InputSpec,
    ModelManifest,
    OutputSpec,
    Preprocessing,
    sha256_file,
    write_manifest,
)


def tiny_recognizer(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    """uint8 NHWC (N, size, size, 1) -> block_scores (N, size/8, size/8): normalise, 4 convs with a residual add,
    a 1x1 head, softmax — the shape of the real recognizer, small enough for CPU tests."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(name: str, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, name + "_w"), numpy_helper.from_array(b, name + "_b")])
        nodes.append(
            helper.make_node(
                "Conv", [x, name + "_w", name + "_b"], [name], name=name, pads=[k // 2] * 4, strides=[stride] * 2
            )
        )
        return name

    inits.append(numpy_helper.from_array(np.full((1, 1, 1, 1), 0.449 * 255, np.float32), "mean"))
    inits.append(numpy_helper.from_array(np.full((1, 1, 1, 1), 0.226 * 255, np.float32), "std"))
    nodes += [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Sub", ["t", "mean"], ["s"]),
        helper.make_node("Div", ["s", "std"], ["n"]),
    ]
    nodes.append(helper.make_node("Relu", [conv("c1", "n", 1, 16, 3, 2)], ["r1"]))
    nodes.append(helper.make_node("Relu", [conv("c2", "r1", 16, 16)], ["r2"]))
    nodes.append(helper.make_node("Add", [conv("c3", "r2", 16, 16), "r1"], ["a3"]))
    nodes.append(helper.make_node("Relu", ["a3"], ["r3"]))
    nodes.append(helper.make_node("Relu", [conv("c4", "r3", 16, 32, 3, 2)], ["r4"]))
    nodes.append(helper.make_node("Relu", [conv("c5", "r4", 32, 32, 3, 2)], ["r5"]))
    nodes.append(helper.make_node("Softmax", [conv("head", "r5", 32, 2, 1)], ["sm"], axis=1))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    nodes.append(helper.make_node("Gather", ["sm", "one"], ["g"], axis=1))
    nodes.append(helper.make_node("Squeeze", ["g", "one"], ["block_scores"]))
    grid = size // 8
    graph = helper.make_graph(
        nodes,
        "tiny_recognizer",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 1])],
        [helper.make_tensor_value_info("block_scores", TensorProto.FLOAT, ["N", grid, grid])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def textured_images(n: int, size: int = 64, seed: int = 1) -> np.ndarray:
    """Blurred noise with dark blobs on half of them: inputs with realistic activation statistics."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, 1), np.uint8)
    for i in range(n):
        base = cv2.GaussianBlur(rng.normal(128, 20, (size, size)).clip(0, 255), (5, 5), 1.5)
        if i % 2:
            y, x = (int(v) for v in rng.integers(8, size - 8, 2))
            cv2.circle(base, (x, y), int(rng.integers(2, 6)), float(rng.integers(0, 60)), -1)
        out[i, :, :, 0] = base.astype(np.uint8)
    return out


def write_onnx_with_manifest(path: Path, model: onnx.ModelProto, size: int = 64) -> ModelManifest:
    onnx.save(model, str(path))
    grid = size // 8
    manifest = ModelManifest(
        task="recognizer",
        format="onnx",
        file=path.name,
        sha256=sha256_file(path),
        architecture="tiny-fcn-test",
        input=InputSpec(height=size, width=size, channels=1),
        outputs=[OutputSpec(name="block_scores", shape=["N", grid, grid], meaning="P(block is defective)")],
        preprocessing=Preprocessing(color="gray", mean=[0.449], std=[0.226]),
        batch=BatchSpec(min=1, opt=4, max=64, dynamic=True),
        block_size=8,
        classes=["normal", "defect"],
        opset=17,
    )
    write_manifest(path, manifest)
    return manifest
