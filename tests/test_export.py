"""Export and evaluation end to end on tiny models: train (a few steps) -> evaluate -> export -> ONNX Runtime.

The models are trained for two steps on a small synthetic data set: their accuracy is meaningless, but every
tensor, threshold and file goes the way a real run's does. Parity images are Magnetic Tile's when
../shared/datasets/magnetic-tile is present, synthetic parts otherwise (export's default).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

pytest.importorskip("torch")

from train_helpers import make_dataset

from inspector.config import DecisionConfig
from inspector.manifest import ManifestError, read_manifest
from inspector.train import evaluate as E
from inspector.train.cli import main as train_cli
from inspector.train.datasets import load_dataset
from inspector.train.export import PARITY_ATOL, export_checkpoint

SIZE = 96


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints of all four tasks, two training steps each, plus separate train/test data folders."""
    root = tmp_path_factory.mktemp("export")
    train_dir = make_dataset(root / "train", n=20, size=(80, 96), seed=1)
    test_dir = make_dataset(root / "test", n=12, size=(80, 96), seed=2)
    out = {"root": root, "train": train_dir, "test": test_dir}
    for task in ("recognizer", "segmenter", "classifier", "deeplabv3plus"):
        code = train_cli(
            ["train", "--data", str(train_dir), "--val-fraction", "0.3", "--out", str(root / task), "--task", task,
             "--arch", "resnet-tiny", "--size", str(SIZE), "--epochs", "1", "--steps-per-epoch", "2", "--batch", "2",
             "--crop", "32", "--threads", "1", "--no-plots", "--seed", "3"]
        )  # fmt: skip
        assert code == 0
        out[task] = root / task / "best.pt"
    return out


def _session_io(path: Path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, session.get_inputs(), session.get_outputs()


@pytest.mark.parametrize("task", ["recognizer", "segmenter", "classifier", "deeplabv3plus"])
def test_export_parity_and_manifest_conventions(trained, task):
    path = trained["root"] / "exported" / f"{task}.onnx"
    manifest, info = export_checkpoint(trained[task], path, threads=1)
    parity = info["parity"]
    print(f"{task}: ONNX Runtime vs PyTorch max |diff| {parity['max_abs_diff']:.2e} on {parity['source']}")
    assert parity["max_abs_diff"] <= PARITY_ATOL and parity["max_abs_diff_batch1"] <= PARITY_ATOL

    # The manifest beside it loads through the daemon's reader (hash included) and describes the file.
    loaded = read_manifest(path)
    assert loaded == manifest
    assert loaded.opset == 17 and loaded.input.height == SIZE and loaded.input.channels == 1
    session, inputs, outputs = _session_io(path)
    assert [i.name for i in inputs] == ["image"]
    assert inputs[0].type == "tensor(uint8)"
    assert isinstance(inputs[0].shape[0], str), "batch must be dynamic"
    assert inputs[0].shape[1:] == [SIZE, SIZE, 1], "H, W, C must be static (NHWC)"
    assert [o.name for o in outputs] == [o.name for o in manifest.outputs]
    spec = manifest.outputs[0]
    assert outputs[0].shape[1:] == spec.shape[1:]

    batch = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 1), dtype=np.uint8)
    (scores,) = session.run(None, {"image": batch})
    assert scores.dtype == np.float32 and list(scores.shape) == [3, *spec.shape[1:]]
    assert scores.min() >= 0 and scores.max() <= 1
    if manifest.task == "recognizer":
        assert manifest.output("block_scores") and scores.shape[1:] == manifest.grid
        assert manifest.classes == ["normal", "defect"]
    else:
        assert manifest.classes[0] == "background" and len(manifest.classes) == scores.shape[1]
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)

    # Static graph for TensorRT: no run-time shape arithmetic feeding Resize, no uint8 intermediates.
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert "Shape" not in ops, f"run-time shape computation left in the graph: {sorted(ops)}"
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    for node in graph.node:
        if node.op_type == "Resize":  # (X, roi, scales) with constant scales, never run-time sizes
            assert len(node.input) == 3 and node.input[2] in constants, node

    # A replaced model file is refused.
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="does not match its manifest"):
        read_manifest(path)


def test_train_evaluate_export_end_to_end(trained, tmp_path, capsys):
    """The three commands as a user runs them; the exported ONNX scores the test set like the checkpoint."""
    for task in ("recognizer", "segmenter"):
        report, decision = tmp_path / f"{task}.json", tmp_path / f"{task}.yaml"
        assert train_cli(
            ["evaluate", "--model", str(trained[task]), "--data", str(trained["test"]), "--val-split",
             str(trained["root"] / task / "split.json"), "--threads", "1", "--out", str(report),
             "--yaml", str(decision)]
        ) == 0  # fmt: skip
        rep = json.loads(report.read_text())
        assert rep["thresholds_tuned_on"].startswith("the validation images of")
        assert rep["images"] == 12 and len(rep["records"]) == 12
        assert set(rep["image"]) == {"all", "small"}
        # The suggested block is a valid `decision:` section of the line config.
        block = yaml.safe_load(decision.read_text())["decision"]
        DecisionConfig(**block)
        keys = {"pixel_threshold", "min_area_px"} if task == "segmenter" else {"block_threshold"}
        assert set(block) == keys
        if task == "segmenter":
            assert set(rep["pixel"]) == {"all", "small"}

        onnx_path = tmp_path / f"{task}.onnx"
        assert train_cli(
            ["export", "--checkpoint", str(trained[task]), "--out", str(onnx_path), "--evaluation", str(report),
             "--dataset", "synthetic test set", "--threads", "1"]
        ) == 0  # fmt: skip
        manifest = read_manifest(onnx_path)
        assert manifest.training is not None and manifest.training.dataset == "synthetic test set"
        assert manifest.training.suggested_thresholds == pytest.approx(rep["thresholds"])
        assert manifest.training.metrics["image_all_tpr"] == pytest.approx(rep["image"]["all"]["tpr"])

        # Evaluating the ONNX file (through ONNX Runtime, configured by its manifest) reproduces the report.
        onnx_model = E.open_model(onnx_path, threads=1)
        assert onnx_model.info.task == task and onnx_model.info.size == (SIZE, SIZE)
        test, _ = load_dataset(trained["test"])
        rep_onnx = E.report(onnx_model, test, rep["thresholds"], tuned_on="same")
        ref = np.array([r["score"] for r in rep["records"]])
        got = np.array([r.score for r in E.score(onnx_model, test, pixel_threshold=rep["thresholds"].get(
            "pixel_threshold"), pixels=False).records])  # fmt: skip
        if task == "recognizer":
            np.testing.assert_allclose(got, ref, atol=PARITY_ATOL)
        else:  # blob areas: equal unless a pixel sits within float noise of the threshold
            assert np.mean(got == ref) >= 0.9
        assert rep_onnx["image"]["all"]["defective"] == rep["image"]["all"]["defective"]
    out = capsys.readouterr().out
    assert "decision:" in out and "parity ONNX Runtime vs PyTorch" in out


def test_evaluate_never_guesses_an_operating_point(trained):
    with pytest.raises(SystemExit, match="no operating point"):
        train_cli(["evaluate", "--model", str(trained["recognizer"]), "--data", str(trained["test"]), "--threads", "1"])


def test_native_resolution_models_record_their_placement(trained, tmp_path):
    manifest, _ = export_checkpoint(trained["recognizer"], tmp_path / "r.onnx", threads=1)
    assert manifest.preprocessing.fit == "place" and manifest.preprocessing.scale == 1.0
    # A fully convolutional model exports at another input (e.g. the line camera's frame at its scale).
    other, _ = export_checkpoint(trained["recognizer"], tmp_path / "r2.onnx", threads=1, input_size=(128, 192))
    assert (other.input.height, other.input.width) == (128, 192) and other.grid == (4, 6)
    classifier, _ = export_checkpoint(trained["classifier"], tmp_path / "c.onnx", threads=1)
    assert classifier.preprocessing.fit == "squash" and classifier.preprocessing.scale is None


def test_evaluate_refuses_test_images_in_validation(trained):
    with pytest.raises(SystemExit, match="also validation images"):
        train_cli(
            ["evaluate", "--model", str(trained["recognizer"]), "--data", str(trained["test"]), "--val-data",
             str(trained["test"]), "--threads", "1"]
        )  # fmt: skip


def test_small_defect_subset_and_oracle_scores(trained):
    """An oracle recognizer (the true block map as its scores) scores ACC 1; the small subset is 1..99 px."""
    from inspector.train.datasets import read_mask
    from inspector.train.labels import block_labels, grid_for

    test, _ = load_dataset(trained["test"])

    class Oracle:
        """Scores the test images in the order evaluate runs them: the true block map of each."""

        info = E.ModelInfo("recognizer", "oracle", (SIZE, SIZE), "gray", [], "oracle")

        def __init__(self, samples):
            self.pending = iter(samples)

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            masks = []
            for _ in range(len(batch)):
                s = next(self.pending)
                masks.append(read_mask(s.mask) if s.mask else np.zeros((80, 96), bool))
            return np.stack([block_labels(m, grid_for((SIZE, SIZE))).astype(np.float32) for m in masks])

    rep = E.report(Oracle(test), test, {"block_threshold": 0.5}, tuned_on="oracle", batch=5)
    assert rep["image"]["all"]["acc"] == 1.0 and rep["image"]["all"]["auroc"] == 1.0
    small = [r for r in rep["records"] if r["small"]]
    assert all(0 < r["defect_area_px"] < 100 and r["defective"] for r in small)
    assert {r["name"] for r in small} == {s.image.name for s in test if s.defective and 0 < s.defect_area_px < 100}
    assert rep["image"]["small"]["defective"] == len(small)
    assert rep["image"]["small"]["good"] == sum(not s.defective for s in test)
