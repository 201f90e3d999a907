"""The daemon agrees with evaluation (issue 14): a folder replay of a test set gives, image by image, the verdicts
`inspector-train evaluate` computes for the same images at the operating point it exports.

Real everything: synthetic parts of several sizes in the generic training layout (inspector.synth), real ONNX
models with manifests (a native-resolution recognizer, fit place at scale 1.0, and a squashing segmenter: both
of the ways a frame becomes a network input), `inspector-train evaluate` run as a user runs it, its operating
point chosen on a separate validation set and exported as the `decision:` block, the real daemon on a folder
replay of the test set with that block, and its verdicts read from a real SUB socket and matched to evaluate's
per-image records by the verdict's `source_name`.

- recognizer (segmenter_mode never): reject iff the image's highest block score >= block_threshold, the score
  equal to evaluate's within the wire's rounding;
- segmenter (segmenter_mode always): reject iff the largest blob >= min_area_px at pixel_threshold, the blob's
  area equal to evaluate's.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from daemon_helpers import free_port, run_to_end, write_config
from tiny_models import write_tiny_recognizer, write_tiny_segmenter

from inspector.synth import random_part, write_dataset

pytestmark = pytest.mark.timeout(900)  # a loaded 2-core box: the CPU work is ~10 s per test

ROOT = Path(__file__).resolve().parents[1]
INPUT = 128  # the models' input; the test images are smaller and larger than it
SIZES = [(96, 80), (128, 128), (112, 160), (90, 200), (150, 120)]  # (height, width)
SLOT = (max(h for h, _ in SIZES), max(w for _, w in SIZES))
WIRE_DECIMALS = 4  # verdict_message rounds recognizer_score


def _test_set(root: Path, per_size: int, seed: int, sizes: list[tuple[int, int]] = SIZES) -> None:
    """The generic layout (images/, masks/, classes.csv) with parts of every size in `sizes`."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(per_size * len(sizes)):
        h, w = sizes[i % len(sizes)]
        image, label, truth = random_part(rng, h, w, defect_probability=0.5, small_fraction=0.3)
        name = f"t{i:02d}.png"
        cv2.imwrite(str(root / "images" / name), image[:, :, 0])
        if truth.defective:
            cv2.imwrite(str(root / "masks" / name), np.where(label > 0, 255, 0).astype(np.uint8))
        rows.append((name, truth.kind if truth.defective else "good"))
    with (root / "classes.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("name", "class"), *rows])


def _evaluate(model: Path, test: Path, val: Path, out: Path) -> tuple[dict, dict]:
    """`inspector-train evaluate` as a user runs it -> (its report, the decision block it exports)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "inspector.train.cli", "evaluate", "--model", str(model), "--data", str(test)]
    cmd += ["--val-data", str(val), "--threads", "1", "--out", str(out / "eval.json"), "--yaml", str(out / "d.yaml")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "eval.json").read_text()), yaml.safe_load((out / "d.yaml").read_text())["decision"]


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agreement")
    models = tmp / "models"
    models.mkdir()
    # Bright-spot detectors at a level the synthetic parts cross now and then: scores spread over (0, 1).
    rec = write_tiny_recognizer(models / "recognizer.onnx", size=INPUT, threshold=150, place_scale=1.0)
    seg = write_tiny_segmenter(models / "segmenter.onnx", size=INPUT, threshold=150)
    write_dataset(tmp / "val", 24, seed=11, size=(120, 136), defect_probability=0.5)
    _test_set(tmp / "test", per_size=4, seed=12)
    return tmp, rec, seg


def _replay(
    tmp: Path, models: tuple[Path, Path], decision: dict, mode: str, slot: tuple[int, int] = SLOT
) -> dict[str, dict]:
    """The daemon on a folder replay of the test set -> its verdicts by file name."""
    port = free_port()
    source = f"  kind: folder\n  path: {tmp / 'test'}\n  height: {slot[0]}\n  width: {slot[1]}\n  loop: false"
    config = write_config(
        tmp / f"line-{mode}.yaml", models, source=source, port=port, extra=yaml.safe_dump({"decision": decision})
    )
    config.write_text(config.read_text().replace("  onnxruntime:", f"  segmenter_mode: {mode}\n  onnxruntime:"))
    verdicts = run_to_end(config, port)
    assert all(v["inspected"] for v in verdicts), [v["detail"] for v in verdicts if not v["inspected"]]
    by_name = {Path(v["source_name"]).name: v for v in verdicts}
    assert len(by_name) == len(verdicts)  # one verdict per image
    return by_name


def test_recognizer_verdicts_equal_evaluate_at_the_exported_threshold(line):
    tmp, rec, seg = line
    report, decision = _evaluate(rec, tmp / "test", tmp / "val", tmp / "rec")
    threshold = decision["block_threshold"]
    records = {r["name"]: r for r in report["records"]}
    rejects = {name for name, r in records.items() if r["score"] >= threshold}
    assert 0 < len(rejects) < len(records)  # both verdicts occur: the comparison can fail
    verdicts = _replay(tmp, (rec, seg), decision, "never")
    assert set(verdicts) == set(records)
    for name, r in records.items():
        v = verdicts[name]
        assert v["result"] == ("reject" if name in rejects else "pass"), (name, r["score"], v)
        assert v["recognizer_score"] == pytest.approx(r["score"], abs=0.5 * 10**-WIRE_DECIMALS + 1e-6), name
    # evaluate's own figures are the line's: it reports at the threshold it exports
    assert report["thresholds"] == decision
    reported = report["image"]["all"]
    assert reported["tp"] + reported["fp"] == len(rejects)


def test_segmenter_verdicts_equal_evaluate_at_the_exported_operating_point(line):
    tmp, rec, seg = line
    report, decision = _evaluate(seg, tmp / "test", tmp / "val", tmp / "seg")
    assert report["thresholds"] == decision
    min_area = decision["min_area_px"]
    records = {r["name"]: r for r in report["records"]}
    rejects = {name for name, r in records.items() if r["score"] >= min_area}
    assert 0 < len(rejects) < len(records)
    verdicts = _replay(tmp, (rec, seg), decision, "always")
    assert set(verdicts) == set(records)
    for name, r in records.items():
        v = verdicts[name]
        assert v["segmenter_ran"] and v["result"] == ("reject" if name in rejects else "pass"), (name, r, v)
        if name in rejects:  # the largest blob is the first defect, in frame pixels
            assert v["defects"][0]["area_px"] == r["score"], name


DEMO = ROOT / "engines" / "demo"
DEMO_SIZES = [(320, 320), (288, 352), (352, 256), (240, 320)]


def test_demo_recognizer_verdicts_equal_evaluate(tmp_path):
    """The same with the committed demo recognizer, a trained network (numerics a max-pool cannot show), on
    synthetic parts of the kind it was trained on, at sizes around the demo's 320x320 frames (whatever the
    model's input: squashed or placed, evaluate and the daemon prepare them alike)."""
    rec, seg = DEMO / "recognizer.onnx", DEMO / "segmenter.onnx"
    write_dataset(tmp_path / "val", 24, seed=21, size=(320, 320), defect_probability=0.5)
    _test_set(tmp_path / "test", per_size=3, seed=22, sizes=DEMO_SIZES)
    report, decision = _evaluate(rec, tmp_path / "test", tmp_path / "val", tmp_path / "rec")
    assert report["thresholds"] == decision
    records = {r["name"]: r for r in report["records"]}
    rejects = {name for name, r in records.items() if r["score"] >= decision["block_threshold"]}
    assert 0 < len(rejects) < len(records)
    slot = (max(h for h, _ in DEMO_SIZES), max(w for _, w in DEMO_SIZES))
    verdicts = _replay(tmp_path, (rec, seg), decision, "never", slot)
    assert set(verdicts) == set(records)
    for name, r in records.items():
        v = verdicts[name]
        assert v["result"] == ("reject" if name in rejects else "pass"), (name, r["score"], v)
        assert v["recognizer_score"] == pytest.approx(r["score"], abs=0.5 * 10**-WIRE_DECIMALS + 1e-6), name
