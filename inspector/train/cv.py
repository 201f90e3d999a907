"""`inspector-train cv`: the paper's protocol — cross-validation groups, each model against its baseline.

    inspector-train cv --data ../shared/datasets/magnetic-tile --out runs/cv-r50 --arch resnet50 --size 224 \\
        --epochs 30 --groups 5 [--tasks recognizer,classifier,segmenter,deeplabv3plus] [--resume]

Groups. Each of the `--groups` groups draws its own train / validation / test split at random in fixed
proportions (default 70 / 10 / 20 %), stratified: every stratum — defect class, and within a defect class
"small" (1..99 px), "large" (>= 100 px) and "unlabelled" (empty mask) — is split in those proportions, so
every group's test set holds the same share of each class and of the small defects the paper's headline
metric is about. Group g's split is seeded with SeedSequence([seed, g]) (recorded in the results); the same
command reproduces the same splits. Groups are independent random draws (as in the paper), not a partition
into folds: an image can be a test image in several groups.

Per group and task: train on the training part (checkpoint chosen on validation), choose the operating point on
validation (`evaluate.choose_thresholds`), measure on test (`evaluate.report`). Every task of a group sees the
same split, so the recognizer and its ResNet classifier baseline, and the segmenter and its DeepLabv3+
baseline, are compared on the same images. Results: OUT/groupG/TASK/{best.pt, result.json}; OUT/cv.json (all
numbers, the command, git commit, hardware, per-group seeds and training times) and OUT/cv.md (tables per
group and mean ± std). With --resume a finished (group, task) is read back instead of retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from inspector.train import metrics as M
from inspector.train.datasets import GOOD, Sample, summarize
from inspector.train.evaluate import SMALL_DEFECT_PX, jsonable

TASKS = ("recognizer", "classifier", "segmenter", "deeplabv3plus")
BASELINE = {"recognizer": "classifier", "segmenter": "deeplabv3plus"}


def stratum(sample: Sample) -> str:
    if not sample.defective:
        return GOOD
    if sample.defect_area_px == 0:
        return f"{sample.cls}/unlabelled"
    return f"{sample.cls}/{'small' if sample.defect_area_px < SMALL_DEFECT_PX else 'large'}"


def group_seed(seed: int, group: int) -> int:
    return int(np.random.SeedSequence([seed, group]).generate_state(1)[0])


@dataclass
class Split:
    group: int
    seed: int
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]


def cv_splits(
    samples: list[Sample], groups: int = 5, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0
) -> list[Split]:
    """`groups` independent stratified train/val/test draws (see the module docstring)."""
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(f"fractions test {test_fraction} + val {val_fraction} must lie in (0, 1)")
    strata: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: str(s.image)):  # independent of the order files were listed in
        strata.setdefault(stratum(s), []).append(s)
    splits = []
    for g in range(groups):
        gs = group_seed(seed, g)
        rng = np.random.default_rng(gs)
        train, val, test = [], [], []
        for key in sorted(strata):
            members = strata[key]
            order = rng.permutation(len(members))
            n_test = round(test_fraction * len(members))
            n_val = round(val_fraction * len(members))
            test += [members[i] for i in order[:n_test]]
            val += [members[i] for i in order[n_test : n_test + n_val]]
            train += [members[i] for i in order[n_test + n_val :]]
        splits.append(Split(g, gs, train, val, test))
    return splits


# ----------------------------------------------------------------------------------------------- running


def hardware(device: str, threads: int) -> str:
    import torch

    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)} (host: {cpu})"
    return f"CPU only ({cpu}, {threads} torch thread(s) per process)"


def run_group_task(split: Split, task: str, base_cfg: dict[str, Any], classes: list[str], out: Path, resume: bool):
    """Train, calibrate on validation, measure on test; -> the result dict (also written to out/result.json)."""
    from inspector.train.evaluate import TorchModel, choose_thresholds, report
    from inspector.train.recipe import TrainConfig, train

    result_path = out / "result.json"
    if resume and result_path.is_file():
        return json.loads(result_path.read_text())
    cfg = TrainConfig(**{**base_cfg, "task": task, "seed": base_cfg.get("seed", 0) + split.group})
    started = time.monotonic()
    best = train(cfg, split.train, split.val, classes, out)
    wall = time.monotonic() - started
    model = TorchModel(best, threads=cfg.threads, device="cuda" if _cuda(cfg.device) else "cpu")
    thresholds = choose_thresholds(model, split.val, batch=cfg.val_batch)
    rep = report(model, split.test, thresholds, tuned_on=f"group {split.group} validation ({len(split.val)} images)")
    rep.update(
        group=split.group,
        split_seed=split.seed,
        task=task,
        train_seconds=model.checkpoint.get("train_seconds"),
        train_wall_seconds=wall,
        epoch_chosen=model.checkpoint.get("epoch"),
        config=cfg.to_dict(),
        counts={"train": summarize(split.train), "val": summarize(split.val), "test": summarize(split.test)},
    )
    result_path.write_text(json.dumps(jsonable(rep), indent=1) + "\n")
    return json.loads(result_path.read_text())


def _cuda(device: str) -> bool:
    import torch

    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


# ---------------------------------------------------------------------------------------------- reporting

IMAGE_COLUMNS = [("all", "tpr"), ("all", "tnr"), ("all", "acc"), ("all", "ap"), ("all", "auroc"),
                 ("small", "tpr"), ("small", "tnr"), ("small", "acc")]  # fmt: skip
PIXEL_COLUMNS = ["precision", "recall", "f1", "iou"]


def _value(result: dict[str, Any], level: str, subset: str, key: str) -> float:
    v = result.get(level, {}).get(subset, {}).get(key)
    return M.NAN if v is None else float(v)


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}"


def summary(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """task -> metric name -> mean/std/defined/n over groups."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for task in TASKS:
        rows = [r for r in results if r["task"] == task]
        if not rows:
            continue
        keys = {f"image_{s}_{k}": ("image", s, k) for s, k in IMAGE_COLUMNS}
        keys.update({f"pixel_all_{k}": ("pixel", "all", k) for k in PIXEL_COLUMNS})
        keys.update({f"pixel_small_{k}": ("pixel", "small", k) for k in ("recall", "f1")})
        out[task] = {name: M.summarize([_value(r, *where) for r in rows]) for name, where in keys.items()}
        out[task]["train_seconds"] = M.summarize([float(r.get("train_seconds") or M.NAN) for r in rows])
    return out


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    summ = summary(results)
    lines = [
        f"# Cross-validation: {meta['data']}",
        "",
        f"- command: `{meta['command']}`",
        f"- commit: `{meta['commit']}`; hardware: {meta['hardware']}; started {meta['started']}, "
        f"wall time {meta['wall_seconds'] / 60:.1f} min",
        f"- groups: {meta['groups']} (split seeds {', '.join(str(s) for s in meta['split_seeds'])}), "
        f"train/val/test = {1 - meta['test_fraction'] - meta['val_fraction']:.2f}/{meta['val_fraction']:.2f}/"
        f"{meta['test_fraction']:.2f} per stratum",
        "- image level: ACC = (TPR + TNR) / 2; small = TPR on defective test images with 1..99 defect px, "
        "TNR on all defect-free test images; operating point chosen on each group's validation split",
        "- pixel level (segmenters): defect class vs background at native resolution, summed over test images",
        "",
        "## Image level, mean ± std over groups",
        "",
        "| model | TPR | TNR | ACC | AP | AUROC | small TPR | small TNR | small ACC | train time / group |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, s in summ.items():
        cells = [f"{_fmt(s[f'image_{a}_{k}']['mean'])} ± {_fmt(s[f'image_{a}_{k}']['std'])}" for a, k in IMAGE_COLUMNS]
        lines.append(f"| {task} | {' | '.join(cells)} | {s['train_seconds']['mean'] / 60:.1f} min |")
    pixel_tasks = [t for t in summ if t in ("segmenter", "deeplabv3plus")]
    if pixel_tasks:
        lines += ["", "## Pixel level, mean ± std over groups", "",
                  "| model | precision | recall | F1 | IoU | small-defect recall | small-defect F1 |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for task in pixel_tasks:
            s = summ[task]
            names = [f"pixel_all_{k}" for k in PIXEL_COLUMNS] + ["pixel_small_recall", "pixel_small_f1"]
            lines.append(
                f"| {task} | " + " | ".join(f"{_fmt(s[n]['mean'])} ± {_fmt(s[n]['std'])}" for n in names) + " |"
            )
    lines += ["", "## Per group", "",
              "| group | model | TPR | TNR | ACC | AP | AUROC | small TPR | small TNR | small ACC "
              "| pixel P | pixel R | pixel F1 | IoU | thresholds | train s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(results, key=lambda r: (r["group"], TASKS.index(r["task"]))):
        image = [_fmt(_value(r, "image", a, k)) for a, k in IMAGE_COLUMNS]
        pixel = [_fmt(_value(r, "pixel", "all", k)) for k in PIXEL_COLUMNS] if "pixel" in r else ["–"] * 4
        th = ", ".join(f"{k} {v:.3g}" for k, v in r["thresholds"].items())
        lines.append(
            f"| {r['group']} | {r['task']} | {' | '.join(image)} | {' | '.join(pixel)} | {th} | "
            f"{(r.get('train_seconds') or 0):.0f} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from inspector.train.cli import ARCH_CHOICES, parse_size

    p = subparsers.add_parser(
        "cv",
        help="the paper's cross-validation protocol: models against baselines on the same groups",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    p.add_argument("--groups", type=int, default=5)
    p.add_argument("--only-groups", help="comma-separated group indices to run (e.g. to spread groups over machines)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="split seed; group g trains with seed + g")
    p.add_argument("--arch", choices=ARCH_CHOICES, default="resnet50")
    p.add_argument("--size", type=parse_size, default=(224, 224))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps-per-epoch", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--crop", type=int, default=128, help="segmenter branch crop")
    p.add_argument("--output-stride", type=int, choices=(8, 16, 32), default=16)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--resume", action="store_true", help="reuse finished (group, task) results in OUT")
    p.set_defaults(func=run_cv)


def run_cv(args: argparse.Namespace) -> int:
    from inspector.train.augment import AugmentConfig
    from inspector.train.datasets import load_dataset
    from inspector.train.export import git_commit

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; choose from {TASKS}")
    samples, classes = load_dataset(args.data)
    splits = cv_splits(samples, args.groups, args.test_fraction, args.val_fraction, args.seed)
    if args.only_groups:
        wanted = {int(g) for g in args.only_groups.split(",")}
        splits = [s for s in splits if s.group in wanted]
    base_cfg = {
        "arch": args.arch,
        "size": args.size,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "batch": args.batch,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "crop": args.crop,
        "output_stride": args.output_stride,
        "augment": AugmentConfig(enabled=not args.no_augment),
        "workers": args.workers,
        "threads": args.threads,
        "device": args.device,
        "amp": args.amp,
        "seed": args.seed,
        "plots": True,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    started, wall = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic()
    meta = {
        "data": str(args.data),
        "dataset_summary": summarize(samples),
        "classes": classes,
        "command": shlex.join(["inspector-train", *sys.argv[1:]]) if sys.argv else "",
        "commit": git_commit(),
        "hardware": hardware(args.device, args.threads),
        "started": started,
        "groups": args.groups,
        "split_seeds": [s.seed for s in splits],
        "test_fraction": args.test_fraction,
        "val_fraction": args.val_fraction,
        "tasks": tasks,
        "config": {k: (v if not isinstance(v, AugmentConfig) else vars(v)) for k, v in base_cfg.items()},
    }
    results = []
    for split in splits:
        for task in tasks:
            print(f"== group {split.group} (seed {split.seed}): {task}; train {len(split.train)}, "
                  f"val {len(split.val)}, test {len(split.test)} images", flush=True)  # fmt: skip
            r = run_group_task(split, task, base_cfg, classes, args.out / f"group{split.group}" / task, args.resume)
            results.append(r)
            meta["wall_seconds"] = time.monotonic() - wall
            write_reports(args.out, results, meta)  # after every model: a killed run still leaves its tables
    print((args.out / "cv.md").read_text())
    return 0


def write_reports(out: Path, results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    slim = [{k: v for k, v in r.items() if k != "records"} for r in results]
    doc = {"meta": meta, "summary": summary(results), "results": slim}
    (out / "cv.json").write_text(json.dumps(jsonable(doc), indent=1) + "\n")
    (out / "cv.md").write_text(markdown(results, meta))
