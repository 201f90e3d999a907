"""Splits keep every part on one side, are stratified, and come from the data set's own part ids."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from inspector.train.datasets import Sample
from inspector.train.splits import Split, assign_groups, check_disjoint, holdout, kfold


def _parts(n_parts: int = 60, views: int = 3) -> list[Sample]:
    """n_parts physical parts, each photographed `views` times; every 4th part defective (every 8th small)."""
    out = []
    for p in range(n_parts):
        for v in range(views):
            defective = p % 4 == 0
            cls = ("pit" if p % 8 == 0 else "scratch") if defective else "good"
            area = (40 if p % 8 == 0 else 400) if defective else 0
            out.append(Sample(Path(f"/data/images/part{p:03d}_view{v}.png"), None, cls, area, defective))
    return out


def test_no_part_is_on_two_sides_of_any_split():
    samples, how = assign_groups(_parts(), group_by=r"(part\d+)_")
    assert "60 groups" in how
    for split in kfold(samples, k=5, val_fraction=0.15, seed=3):
        sides = {
            name: {s.group for s in members}
            for name, members in (("train", split.train), ("val", split.val), ("test", split.test))
        }
        assert not (sides["train"] & sides["val"]) and not (sides["train"] & sides["test"])
        assert not (sides["val"] & sides["test"])
        assert len(split.train) + len(split.val) + len(split.test) == len(samples)
    # Every image is tested exactly once over the folds.
    tested = Counter(s.image for split in kfold(samples, 5, 0.15, 3) for s in split.test)
    assert set(tested.values()) == {1} and len(tested) == len(samples)


def test_without_groups_the_same_part_would_leak_and_check_disjoint_says_so():
    samples, how = assign_groups(_parts())  # no part ids: one group per image
    assert "its own group" in how
    regrouped = [Sample(s.image, None, s.cls, s.defect_area_px, s.defective, group=s.image.stem[:7]) for s in samples]
    leaky = Split(0, 0, regrouped[:2], [], regrouped[2:3])  # part000 views 0, 1 train; view 2 test
    with pytest.raises(AssertionError, match="part000"):
        check_disjoint([leaky])


def test_folds_are_stratified_by_class_and_size():
    samples, _ = assign_groups(_parts(80), group_by=r"(part\d+)_")
    for split in kfold(samples, k=5, val_fraction=0.1, seed=0):
        counts = Counter(s.cls for s in split.test)
        # 80 parts x 3 views: 30 pit, 30 scratch, 180 good images; a fifth each, give or take one part (3).
        assert abs(counts["pit"] - 6) <= 3 and abs(counts["scratch"] - 6) <= 3 and abs(counts["good"] - 36) <= 3


def test_same_seed_same_folds_other_seed_other_folds():
    samples, _ = assign_groups(_parts(), group_by=r"(part\d+)_")
    a = [[s.image for s in sp.test] for sp in kfold(samples, 5, 0.1, 7)]
    b = [[s.image for s in sp.test] for sp in kfold(list(reversed(samples)), 5, 0.1, 7)]
    c = [[s.image for s in sp.test] for sp in kfold(samples, 5, 0.1, 8)]
    assert [sorted(x) for x in a] == [sorted(x) for x in b]  # independent of file order
    assert a != c


def test_holdout_takes_whole_parts():
    samples, _ = assign_groups(_parts(), group_by=r"(part\d+)_")
    rest, held = holdout(samples, 0.2, seed=1)
    assert 0.1 < len(held) / len(samples) < 0.3
    assert not ({s.group for s in rest} & {s.group for s in held})
    assert any(s.defective for s in held) and any(not s.defective for s in held)


def test_groups_csv_and_a_regex_that_misses(tmp_path):
    samples = _parts(4, 2)
    with (tmp_path / "groups.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "group"])
        for s in samples:
            w.writerow([s.image.name, f"batch{int(s.image.stem[4:7]) // 2}"])
    grouped, how = assign_groups(samples, tmp_path)
    assert "groups.csv" in how and {s.group for s in grouped} == {"batch0", "batch1"}
    with pytest.raises(ValueError, match="does not match"):
        assign_groups(samples, group_by=r"lot(\d+)")
    with pytest.raises(ValueError, match="not a regular expression"):
        assign_groups(samples, group_by="(")
    (tmp_path / "groups.csv").write_text("name,group\npart000_view0.png,a\n")
    with pytest.raises(ValueError, match="no group for"):
        assign_groups(samples, tmp_path)
