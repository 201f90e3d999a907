"""Broken copies of real ONNX models: one more node on the score output, the way a bad export, an FP16 overflow or a
GPU fault breaks a model, so the daemon's output checks meet a genuine ONNX Runtime output.

`poison(src, dst, op, value, when=...)` copies a model (tests/tiny_models.py's, or any recognizer/segmenter
obeying inspector.manifest) with its score output replaced by `op(output, value)`:
- op "Add" or "Mul", value any float: NaN (`Mul` by NaN: NaN everywhere), +-inf, -5 (an offset that keeps values
  finite but out of [0, 1]), 0.5 (a scale that stays inside [0, 1]);
- when "always": on every frame (a blank frame too, so start-up and check-config meet it);
- when "defect": only on frames where the healthy model sees a defect (a score above 0.5 anywhere; for the
  segmenter, its defect channel), the rest unchanged. A static graph cannot pick frames by number, but it can by
  content: this is the fault that lets exactly the parts a healthy model rejects pass, and a blank frame (start-up's
  check) never shows it. Built as Where(ReduceMax(defect scores) > 0.5, op(output, value), output).

The manifest is copied with the new file's hash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from inspector.manifest import read_manifest, sha256_file, write_manifest


def poison(src: Path, dst: Path, op: str, value: float, *, when: str = "always") -> Path:
    if op not in ("Add", "Mul") or when not in ("always", "defect"):
        raise ValueError(f"unknown poison {op} / {when}")
    manifest = read_manifest(src)
    model = onnx.load(str(src))
    graph = model.graph
    out = "block_scores" if manifest.task == "recognizer" else "pixel_scores"
    raw = f"{out}_healthy"
    for node in graph.node:  # the node that made the output now makes the healthy scores
        node.output[:] = [raw if name == out else name for name in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), "poison_value"))
    if when == "always":
        graph.node.append(helper.make_node(op, [raw, "poison_value"], [out]))
    else:
        nodes = [helper.make_node(op, [raw, "poison_value"], ["poisoned"])]
        scores = raw
        if manifest.task == "segmenter":  # channel 1 on: the defect classes
            graph.initializer.extend(
                [
                    numpy_helper.from_array(np.array([1], np.int64), "poison_from"),
                    numpy_helper.from_array(np.array([2**31], np.int64), "poison_to"),
                    numpy_helper.from_array(np.array([1], np.int64), "poison_axis"),
                ]
            )
            nodes.append(helper.make_node("Slice", [raw, "poison_from", "poison_to", "poison_axis"], ["defects"]))
            scores = "defects"
        axes = list(range(1, 4 if manifest.task == "segmenter" else 3))
        graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "poison_level"))
        nodes += [
            helper.make_node("ReduceMax", [scores], ["frame_max"], axes=axes, keepdims=1),
            helper.make_node("Greater", ["frame_max", "poison_level"], ["defective"]),
            helper.make_node("Where", ["defective", "poisoned", raw], [out]),
        ]
        graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    write_manifest(dst, manifest.model_copy(update={"file": dst.name, "sha256": sha256_file(dst)}))
    return dst
