"""Cross-validation: folds on Magnetic Tile, the summary tables, pooled and cross-fitted figures, the merge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from inspector.train.cv import compact, crossfit, markdown, pooled, run_summary, summary

MAGNETIC_TILE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "magnetic-tile"


@pytest.mark.dataset
def test_magnetic_tile_folds_keep_small_defects():
    if not MAGNETIC_TILE.is_dir():
        pytest.skip(f"Magnetic Tile data set not found at {MAGNETIC_TILE} (../shared/datasets/magnetic-tile)")
    from inspector.train.datasets import scan_magnetic_tile
    from inspector.train.splits import assign_groups, kfold

    samples, _ = assign_groups(scan_magnetic_tile(MAGNETIC_TILE), MAGNETIC_TILE)
    small = [s for s in samples if s.defective and 0 < s.defect_area_px < 100]
    assert len(small) == 49
    folds = kfold(samples, 5, 0.1, seed=0)
    assert sum(len(f.test) for f in folds) == len(samples)
    for split in folds:
        n_small = sum(s.defective and 0 < s.defect_area_px < 100 for s in split.test)
        assert 9 <= n_small <= 10  # 49 small defects over 5 folds
        assert abs(sum(not s.defective for s in split.test) - 952 / 5) <= 1


def _result(task: str, group: int, acc: float, records: list[tuple[bool, bool, float]] | None = None) -> dict:
    image = {"tpr": acc, "tnr": acc, "acc": acc, "ap": 0.9, "auroc": 0.95}
    r = {
        "task": task,
        "group": group,
        "thresholds": {"block_threshold": 0.5},
        "train_seconds": 60.0,
        "image": {"all": image, "small": {**image, "ap": None}},
        "records": [
            {
                "name": f"{group}-{i}",
                "cls": "x",
                "defective": d,
                "defect_area_px": 50 if sm else 500,
                "small": sm,
                "score": s,
            }
            for i, (d, sm, s) in enumerate(records or [])
        ],
    }
    if task == "segmenter":
        r["pixel"] = {"all": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "iou": 1 / 3}, "small": {"recall": None}}
    return r


META = {"data": "d", "command": "inspector-train cv", "commit": "abc", "hardware": "cpu", "groups": 2,
        "grouping": "one group per image", "val_fraction": 0.1, "data_name": "d"}  # fmt: skip


def test_summary_and_markdown():
    results = [_result("recognizer", g, a) for g, a in enumerate((0.9, 1.0))] + [_result("segmenter", 0, 0.8)]
    s = summary(results)
    assert s["recognizer"]["image_all_acc"]["mean"] == pytest.approx(0.95)
    assert s["recognizer"]["image_all_acc"]["std"] == pytest.approx(math.sqrt(0.005))
    assert math.isnan(s["segmenter"]["pixel_small_recall"]["mean"])
    md = markdown(results, META)
    assert "| recognizer | 0.950 ± 0.071 | 0.950 ± 0.071 | 0.950 ± 0.071 |" in md
    # One fold: a mean, but no spread; an undefined metric stays visibly undefined.
    assert "| segmenter | 0.500 ± n/a | 0.500 ± n/a | 0.500 ± n/a | 0.333 ± n/a | n/a ± n/a |" in md


def test_per_fold_table_names_the_validation_metric_that_chose_each_checkpoint():
    chosen = _result("recognizer", 0, 0.9)
    chosen["validation"] = {"metric": "val_ap", "epoch": 43, "chosen": {"val_ap": 0.981, "val_auroc": 0.99},
                            "curve": [{"epoch": 43, "val_ap": 0.981, "val_auroc": 0.99}]}  # fmt: skip
    older = _result("recognizer", 1, 0.9)  # written before the record existed
    md = markdown([chosen, older], META)
    row0 = next(line for line in md.splitlines() if line.startswith("| 0 | recognizer |"))
    row1 = next(line for line in md.splitlines() if line.startswith("| 1 | recognizer |"))
    assert "| val_ap 0.981 (epoch 44) |" in row0
    assert "| – | 60 |" in row1


def test_crossfitted_thresholds_come_from_the_other_folds_only():
    # Fold 0's scores sit high, fold 1's low: a threshold chosen on fold 1 (0.25) misplaces fold 0's good
    # image; a threshold from fold 0 (0.75) misses fold 1's defect. Each fold gets the other's cut.
    f0 = [(True, True, 0.9), (False, False, 0.6)]
    f1 = [(True, False, 0.4), (False, False, 0.1)]
    results = [_result("recognizer", 0, 1.0, f0), _result("recognizer", 1, 1.0, f1)]
    cf = crossfit(results)
    assert cf[0]["threshold"] == pytest.approx(0.25)  # midway between fold 1's 0.4 and 0.1
    assert cf[1]["threshold"] == pytest.approx(0.75)
    assert cf[0]["image"]["all"]["tnr"] == 0.0 and cf[1]["image"]["all"]["tpr"] == 0.0
    p = pooled(results)  # at each fold's own validation threshold 0.5
    assert (p["all"]["defective"], p["all"]["good"]) == (2, 2)
    assert p["all"]["tpr"] == 0.5 and p["all"]["tnr"] == 0.5  # 0.9 caught, 0.4 missed; 0.6 is a false reject
    assert p["small"]["defective"] == 1 and p["small"]["tpr"] == 1.0


def test_summary_file_has_the_committed_fields_and_merges_folds(tmp_path):
    rng = np.random.default_rng(0)
    results = []
    for g in range(3):
        recs = [
            (bool(d), bool(d and rng.random() < 0.3), float(rng.random() * 0.5 + 0.5 * d)) for d in rng.random(20) < 0.4
        ]
        results.append(_result("recognizer", g, 0.9, recs))
        results.append(_result("classifier", g, 0.8, recs))
    doc = compact(summary(results), META)
    for key in ("dataset", "groups", "group_aware", "hardware"):
        assert key in doc
    assert doc["group_aware"] is True
    for task in ("recognizer", "classifier"):
        for key in ("small_acc", "acc", "ap", "auroc", "train_minutes_per_group", "pooled", "crossfit_small_acc"):
            assert key in doc[task], (task, key)
    folder = tmp_path / "results"
    folder.mkdir()
    for r in results:
        (folder / f"group{r['group']}-{r['task']}.json").write_text(json.dumps({"meta": META, "result": r}))
    import argparse

    out = tmp_path / "summary.json"
    assert run_summary(argparse.Namespace(results=folder, out=out, markdown=tmp_path / "cv.md")) == 0
    merged = json.loads(out.read_text())
    assert merged["recognizer"]["groups_run"] == [0, 1, 2]
    assert merged["recognizer"]["acc"] == pytest.approx(0.9)
    # A result of another protocol is refused, not merged.
    (folder / "group3-recognizer.json").write_text(json.dumps({"meta": {**META, "groups": 7}, "result": results[0]}))
    with pytest.raises(SystemExit, match="different protocol"):
        run_summary(argparse.Namespace(results=folder, out=out, markdown=None))
    (folder / "group3-recognizer.json").unlink()
    # Two folders of one protocol merge (a baseline rerun beside the other model); a (fold, model) twice is refused.
    other = tmp_path / "rerun"
    other.mkdir()
    for r in results:
        if r["task"] == "classifier":
            (folder / f"group{r['group']}-classifier.json").rename(other / f"group{r['group']}-classifier.json")
    assert run_summary(argparse.Namespace(results=[folder, other], out=out, markdown=None)) == 0
    assert json.loads(out.read_text())["classifier"]["groups_run"] == [0, 1, 2]
    (folder / "group1-classifier.json").write_text((other / "group1-classifier.json").read_text())
    with pytest.raises(SystemExit, match="fold 1 classifier is in both"):
        run_summary(argparse.Namespace(results=[folder, other], out=out, markdown=None))
    assert run_summary(argparse.Namespace(results=[f"{folder}:recognizer", other], out=out, markdown=None)) == 0
    with pytest.raises(SystemExit, match="unknown model"):
        run_summary(argparse.Namespace(results=[f"{folder}:recogniser"], out=out, markdown=None))
