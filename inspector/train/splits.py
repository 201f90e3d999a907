"""Splits that keep every physical part (or production batch) on one side: hold-out and k-fold, stratified.

Why. Two pictures of one part — two lighting set-ups, two cameras, a re-inspection — share its texture, its
surroundings and its defect. A part on both sides of a split lets a network recognise the part instead of the
defect, and the test score says nothing about parts it has never seen. So images are grouped by part, and whole
groups are dealt to the sides.

Grouping (`assign_groups`), in this order:
- `--group-by REGEX`: a regular expression searched in each file name (relative to the images folder, with its
  extension); the group is its first capture group, or the whole match without one. A file it does not match
  is an error (a silent singleton group would defeat the point);
- a `groups.csv` beside the images (rows `name,group`, name with or without extension; a header row
  `name,group` is allowed): the data set's own part ids;
- neither: every image is its own group, and the caller logs that it assumed so. Magnetic Tile gives no part ids
  (every file name carries a distinct number), so its groups are its images.

Stratification. A group's stratum is the rarest kind of image it holds (small defect < 100 px, large defect,
defect without pixel labels, defect-free) together with its defect class, so every fold holds its share of each
class and of the small defects the paper's headline metric is about. Within a stratum, groups are shuffled
(seeded) and each goes to the fold that so far holds the fewest images of that stratum, largest groups first.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspector.train.datasets import GOOD, Sample

SMALL_DEFECT_PX = 100


def _relative_name(sample: Sample) -> str:
    path = sample.image
    for parent in path.parents:
        if parent.name in ("images", "Imgs"):
            return path.relative_to(parent).as_posix()
    return path.name


def read_groups_csv(path: Path) -> dict[str, str]:
    table: dict[str, str] = {}
    with path.open(newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2 or not row[1].strip():
                raise ValueError(f"{path}:{i + 1}: expected 'name,group', got {row!r}")
            name, group = row[0].strip(), row[1].strip()
            if i == 0 and name.lower() == "name" and group.lower() == "group":
                continue
            table[name] = group
            table[Path(name).stem] = group
    return table


def assign_groups(
    samples: list[Sample], root: Path | None = None, group_by: str | None = None
) -> tuple[list[Sample], str]:
    """-> (samples with `group` set, a sentence saying how they were grouped)."""
    if group_by:
        try:
            pattern = re.compile(group_by)
        except re.error as exc:
            raise ValueError(f"--group-by {group_by!r} is not a regular expression: {exc}") from None
        out = []
        for s in samples:
            name = _relative_name(s)
            m = pattern.search(name)
            if m is None:
                raise ValueError(f"--group-by {group_by!r} does not match {name!r}: every image needs a group")
            out.append(dataclasses.replace(s, group=m.group(1) if pattern.groups else m.group(0)))
        n = len({s.group for s in out})
        return out, f"grouped by --group-by {group_by!r}: {n} groups for {len(out)} images"
    table_path = root / "groups.csv" if root is not None else None
    if table_path is not None and table_path.is_file():
        table = read_groups_csv(table_path)
        out = []
        for s in samples:
            name = _relative_name(s)
            group = table.get(name, table.get(s.image.name, table.get(s.image.stem)))
            if group is None:
                raise ValueError(f"{table_path}: no group for {name!r}: every image needs one")
            out.append(dataclasses.replace(s, group=group))
        n = len({s.group for s in out})
        return out, f"grouped by {table_path}: {n} groups for {len(out)} images"
    out = [dataclasses.replace(s, group=_relative_name(s)) for s in samples]
    return out, (
        f"no part ids (no --group-by, no groups.csv): each of the {len(out)} images is its own group. If several "
        "images show one part, give --group-by or a groups.csv, or the test scores will be optimistic"
    )


def stratum(sample: Sample) -> tuple[int, str]:
    """(rank, name): lower rank = rarer kind; a group takes its members' lowest."""
    if not sample.defective:
        return 3, GOOD
    if sample.defect_area_px == 0:
        return 2, f"{sample.cls}/unlabelled"
    small = sample.defect_area_px < SMALL_DEFECT_PX
    return (0 if small else 1), f"{sample.cls}/{'small' if small else 'large'}"


def _groups(samples: list[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: str(s.image)):  # independent of the order files were listed in
        groups[s.group or str(s.image)].append(s)
    return groups


def _deal(samples: list[Sample], k: int, seed: int) -> list[list[Sample]]:
    """Whole groups into k bins, stratified (module docstring)."""
    by_stratum: dict[str, list[list[Sample]]] = defaultdict(list)
    for members in _groups(samples).values():
        by_stratum[min(stratum(s) for s in members)[1]].append(members)
    rng = np.random.default_rng(seed)
    bins: list[list[Sample]] = [[] for _ in range(k)]
    totals = np.zeros(k, np.int64)
    for name in sorted(by_stratum):
        groups = by_stratum[name]
        order = rng.permutation(len(groups))
        # Largest groups first (stable for ties by the shuffled order), each to the emptiest bin of this stratum.
        ordered = sorted((groups[i] for i in order), key=len, reverse=True)
        counts = np.zeros(k, np.int64)
        for members in ordered:
            # Fewest of this stratum, then fewest overall, then a random bin: balanced and still seeded.
            keys = counts * 1_000_000 + totals * 1_000 + rng.permutation(k)
            b = int(np.argmin(keys))
            bins[b] += members
            counts[b] += len(members)
            totals[b] += len(members)
    return bins


@dataclass
class Split:
    fold: int
    seed: int
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]


def kfold(samples: list[Sample], k: int = 5, val_fraction: float = 0.1, seed: int = 0) -> list[Split]:
    """k group-aware stratified folds: fold g is the test set of split g (every image is tested exactly once);
    of the other k-1 folds' groups, `val_fraction` of all images (stratified, whole groups) validate, the rest
    train. The same (samples, k, seed) give the same folds; the validation draw of split g is seeded by g too."""
    if k < 2:
        raise ValueError("k-fold needs k >= 2")
    if not 0 <= val_fraction < 1 - 1 / k:
        raise ValueError(f"val_fraction {val_fraction} must lie in [0, {1 - 1 / k:.2f})")
    folds = _deal(samples, k, seed)
    splits = []
    for g in range(k):
        rest = [s for i, f in enumerate(folds) if i != g for s in f]
        train, val = holdout(rest, val_fraction * len(samples) / max(len(rest), 1), seed * 1000 + g + 1)
        splits.append(Split(g, seed, train, val, list(folds[g])))
    check_disjoint(splits)
    return splits


def holdout(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(rest, held_out): about `fraction` of every stratum's images held out, in whole groups."""
    if fraction <= 0:
        return list(samples), []
    if fraction >= 1:
        raise ValueError("the held-out fraction must be below 1")
    # Deal into bins of size `fraction`, take one: the same stratified dealing as the folds.
    k = max(2, round(1 / fraction))
    bins = _deal(samples, k, seed)
    held = bins[0]
    held_ids = {id(s) for s in held}
    return [s for s in samples if id(s) not in held_ids], held


def check_disjoint(splits: list[Split]) -> None:
    """Raises if any group (part) is on two sides of a split: the one property every split here promises."""
    for sp in splits:
        sides = {"train": sp.train, "val": sp.val, "test": sp.test}
        seen: dict[str, str] = {}
        for side, members in sides.items():
            for s in members:
                g = s.group or str(s.image)
                if seen.setdefault(g, side) != side:
                    raise AssertionError(f"split {sp.fold}: part {g!r} is in both {seen[g]} and {side}")
