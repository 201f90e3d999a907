"""Cross-validation splits: stratified, disjoint, complete, reproducible; and the report tables."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from inspector.train.cv import cv_splits, markdown, stratum, summary
from inspector.train.datasets import Sample

MAGNETIC_TILE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "magnetic-tile"


def _samples() -> list[Sample]:
    """A synthetic sample list shaped like Magnetic Tile's classes (files need not exist for splitting)."""
    out = []
    counts = {"good": 95, "blowhole": 23, "crack": 11, "fray": 6, "uneven": 20}
    for cls, n in counts.items():
        for i in range(n):
            area = 0 if cls == "good" else (40 if i % 4 == 0 else 900)
            if cls == "uneven" and i == 1:
                area = 0  # an empty-mask defective image, like MT_Uneven's four
            out.append(Sample(Path(f"/d/{cls}/{i:03d}.jpg"), None, cls, area, defective=cls != "good"))
    return out


def test_splits_are_disjoint_complete_and_stratified():
    samples = _samples()
    splits = cv_splits(samples, groups=5, test_fraction=0.2, val_fraction=0.1, seed=7)
    assert len(splits) == 5
    per_stratum = Counter(stratum(s) for s in samples)
    for split in splits:
        train, val, test = ({s.image for s in part} for part in (split.train, split.val, split.test))
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(train) + len(val) + len(test) == len(samples)
        # Every stratum (class x small/large/unlabelled) is split in the fixed proportions.
        for key, n in per_stratum.items():
            assert sum(stratum(s) == key for s in split.test) == round(0.2 * n), key
            assert sum(stratum(s) == key for s in split.val) == round(0.1 * n), key
        # So every defect class keeps its share of the test set, within one image per stratum of rounding.
        for cls in ("good", "blowhole", "crack", "fray", "uneven"):
            n = sum(s.cls == cls for s in samples)
            assert abs(sum(s.cls == cls for s in split.test) - 0.2 * n) <= 1.5


def test_splits_reproducible_per_seed_and_different_between_groups():
    samples = _samples()
    a = cv_splits(samples, groups=3, seed=1)
    b = cv_splits(list(reversed(samples)), groups=3, seed=1)  # listing order must not matter
    for sa, sb in zip(a, b, strict=True):
        assert sa.seed == sb.seed
        assert [s.image for s in sa.test] == [s.image for s in sb.test]
        assert [s.image for s in sa.train] == [s.image for s in sb.train]
    tests = [frozenset(s.image for s in split.test) for split in a]
    assert len(set(tests)) == 3, "groups must be different random draws"
    c = cv_splits(samples, groups=3, seed=2)
    assert [s.image for s in c[0].test] != [s.image for s in a[0].test]


def test_bad_fractions_refused():
    with pytest.raises(ValueError):
        cv_splits(_samples(), test_fraction=0.8, val_fraction=0.3)


@pytest.mark.dataset
def test_magnetic_tile_splits_keep_small_defects():
    if not MAGNETIC_TILE.is_dir():
        pytest.skip(f"Magnetic Tile data set not found at {MAGNETIC_TILE} (../shared/datasets/magnetic-tile)")
    from inspector.train.datasets import scan_magnetic_tile

    samples = scan_magnetic_tile(MAGNETIC_TILE)
    small = [s for s in samples if s.defective and 0 < s.defect_area_px < 100]
    assert len(small) == 49
    for split in cv_splits(samples, groups=5, seed=0):
        n_small = sum(s.defective and 0 < s.defect_area_px < 100 for s in split.test)
        assert 7 <= n_small <= 12  # 20 % of 49, rounded per class stratum
        assert sum(not s.defective for s in split.test) == round(0.2 * 952)


def _result(task: str, group: int, acc: float) -> dict:
    image = {"tpr": acc, "tnr": acc, "acc": acc, "ap": 0.9, "auroc": 0.95}
    r = {
        "task": task,
        "group": group,
        "thresholds": {"block_threshold": 0.5},
        "train_seconds": 60.0,
        "image": {"all": image, "small": {**image, "ap": None}},
    }
    if task == "segmenter":
        r["pixel"] = {"all": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "iou": 1 / 3}, "small": {"recall": None}}
    return r


def test_summary_and_markdown():
    results = [_result("recognizer", g, a) for g, a in enumerate((0.9, 1.0))] + [_result("segmenter", 0, 0.8)]
    s = summary(results)
    assert s["recognizer"]["image_all_acc"]["mean"] == pytest.approx(0.95)
    assert s["recognizer"]["image_all_acc"]["std"] == pytest.approx(math.sqrt(0.005))
    assert math.isnan(s["segmenter"]["pixel_small_recall"]["mean"])
    meta = {
        "data": "d",
        "command": "inspector-train cv",
        "commit": "abc",
        "hardware": "cpu",
        "started": "now",
        "wall_seconds": 120,
        "groups": 2,
        "split_seeds": [1, 2],
        "test_fraction": 0.2,
        "val_fraction": 0.1,
    }
    md = markdown(results, meta)
    assert "| recognizer | 0.950 ± 0.071 | 0.950 ± 0.071 | 0.950 ± 0.071 |" in md
    # One group: a mean, but no spread; an undefined metric stays visibly undefined.
    assert "| segmenter | 0.500 ± n/a | 0.500 ± n/a | 0.500 ± n/a | 0.333 ± n/a | n/a ± n/a |" in md
