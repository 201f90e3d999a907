"""`inspector-train cv`: the paper's protocol — k-fold cross-validation, each model against its baseline on the
same folds — and `inspector-train cv-summary`, which merges the folds' results into one summary.

    inspector-train cv --data ../shared/datasets/magnetic-tile --out runs/cv-small --arch resnet-small \\
        --groups 5 [--only-groups 0,1] [--tasks recognizer,classifier,segmenter,deeplabv3plus] \\
        [--results docs/results/mt-small] [--resume]
    inspector-train cv-summary --results docs/results/mt-small --out docs/results/mt-small.json

Folds. `--groups` k group-aware, stratified folds (inspector.train.splits): every image is in exactly one test
fold, images of one part (`--group-by`, or the data set's groups.csv) stay on one side of every split, and every
fold holds its share of each defect class and of the small defects (1..99 px) the paper's headline metric is
about. For split g: test = fold g; validation = `--val-fraction` of all images drawn (whole parts, stratified)
from the other folds; train = the rest. The same command gives the same folds. A long protocol can run fold by
fold (`--only-groups`), on several days or machines.

Per fold and task: train on the training part (checkpoint chosen on validation), choose the operating point on
validation (`evaluate.choose_thresholds`), measure on the test fold (`evaluate.report`). Every task of a fold
sees the same split. Results: OUT/groupG/TASK/{best.pt, result.json}; with `--results DIR` each finished
(fold, task) result (metrics and per-image test scores, no weights) is also written to
DIR/groupG-TASK.json, small enough to commit as it completes.

Summary (cv-summary, also written to OUT/cv.{json,md} after every model): per model, mean ± std over folds at
the validation-chosen operating point; **pooled** over all test folds (each image scored by the one model that
never saw it: every small defect of the data set counts once); and **cross-fitted**: fold g's threshold chosen
on the pooled test scores of the *other* folds' models, never on fold g's — the answer to a validation split
with too few defective images to place a threshold on (with 5 folds the cut is chosen on ~4/5 of the data).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from inspector.train import metrics as M
from inspector.train.datasets import summarize
from inspector.train.evaluate import jsonable
from inspector.train.splits import Split, assign_groups, kfold

TASKS = ("recognizer", "classifier", "segmenter", "deeplabv3plus")
BASELINE = {"recognizer": "classifier", "segmenter": "deeplabv3plus"}
SUMMARY_FORMAT = "inspector-cv-summary/1"


# ----------------------------------------------------------------------------------------------- running


def hardware(device: str, threads: int) -> str:
    import torch

    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)} (host: {cpu})"
    return f"CPU only ({cpu}, {threads} torch thread(s), torch {torch.__version__})"


def run_group_task(
    split: Split, task: str, base_cfg: dict[str, Any], classes: list[str], out: Path, resume: bool
) -> dict[str, Any]:
    """Train, calibrate on validation, measure on test; -> the result dict (also written to out/result.json)."""
    from inspector.train.evaluate import TorchModel, choose_thresholds, report
    from inspector.train.recipe import TrainConfig, default_scale, train

    result_path = out / "result.json"
    if resume and result_path.is_file():
        return json.loads(result_path.read_text())
    overrides = dict(base_cfg.get("per_task", {}).get(task, {}))
    cfg_dict = {k: v for k, v in base_cfg.items() if k != "per_task"}
    if cfg_dict.get("scale") == "auto":
        cfg_dict["scale"] = default_scale(task)
    cfg = TrainConfig(**{**cfg_dict, **overrides, "task": task, "seed": base_cfg.get("seed", 0) + split.fold})
    started = time.monotonic()
    best = train(cfg, split.train, split.val, classes, out)
    wall = time.monotonic() - started
    model = TorchModel(best, threads=cfg.threads, device="cuda" if _cuda(cfg.device) else "cpu")
    thresholds = choose_thresholds(model, split.val, batch=cfg.val_batch)
    rep = report(model, split.test, thresholds, tuned_on=f"fold {split.fold} validation ({len(split.val)} images)")
    rep.update(
        group=split.fold,
        split_seed=split.seed,
        task=task,
        train_seconds=model.checkpoint.get("train_seconds"),
        train_wall_seconds=wall,
        epoch_chosen=model.checkpoint.get("epoch"),
        validation=validation_record(model.checkpoint, json.loads((out / "history.json").read_text()), task),
        config=cfg.to_dict(),
        counts={"train": summarize(split.train), "val": summarize(split.val), "test": summarize(split.test)},
    )
    result_path.write_text(json.dumps(jsonable(rep), indent=1) + "\n")
    return json.loads(result_path.read_text())


def validation_record(checkpoint: dict[str, Any], history: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """What chose the checkpoint: its validation metrics, and those of every validated epoch of the whole run
    (`history`: the run's history.json; the best checkpoint's own history stops at its epoch). Kept in
    the committed result so that an ablation can be judged on validation data after the run folder is gone.
    Epochs count from 0, as in `epoch_chosen` and the run's history.json."""
    from inspector.train.recipe import key_metric

    metric = key_metric(task)
    curve = [
        {"epoch": h["epoch"], **{k: v for k, v in h.items() if k.startswith("val_") and k != "val_seconds"}}
        for h in history
        if metric in h
    ]
    return {"metric": metric, "epoch": checkpoint.get("epoch"), "chosen": checkpoint.get("metrics") or {},
            "curve": curve}  # fmt: skip


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


def _records(result: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, defective, small) of a result's test images."""
    rec = result.get("records") or []
    scores = np.array([r["score"] for r in rec], np.float64)
    defective = np.array([r["defective"] for r in rec], bool)
    small = np.array([r["small"] for r in rec], bool)
    return scores, defective, small


def _subset_metrics(scores, defective, small, threshold: float) -> dict[str, dict[str, float]]:
    keep = small | ~defective
    return {
        "all": M.image_metrics(scores, defective, threshold),
        "small": M.image_metrics(scores[keep], defective[keep], threshold),
    }


def crossfit(results: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """fold -> metrics on its test images at the threshold chosen on the other folds' pooled test scores."""
    out = {}
    for r in results:
        others = [o for o in results if o["group"] != r["group"] and o.get("records")]
        if not others or not r.get("records"):
            continue
        pooled = [_records(o) for o in others]
        s = np.concatenate([p[0] for p in pooled])
        d = np.concatenate([p[1] for p in pooled])
        if not d.any() or d.all():
            continue
        t = M.best_threshold(s, d)
        scores, defective, small = _records(r)
        out[r["group"]] = {"threshold": t, "image": _subset_metrics(scores, defective, small, t)}
    return out


def pooled(results: list[dict[str, Any]], mode: str = "validation") -> dict[str, Any] | None:
    """Every fold's test images together, each at its own fold's threshold (validation-chosen, or cross-fitted):
    TPR/TNR/ACC over the whole data set; AP/AUROC over the pooled scores (models differ per fold: indicative)."""
    if not results or not all(r.get("records") for r in results):
        return None
    cf = crossfit(results) if mode == "crossfit" else {}
    calls, defective_all, small_all, scores_all = [], [], [], []
    for r in results:
        scores, defective, small = _records(r)
        if mode == "crossfit":
            if r["group"] not in cf:
                return None
            t = cf[r["group"]]["threshold"]
        else:
            t = float(r["thresholds"].get("block_threshold", r["thresholds"].get("min_area_px", 0.5)))
        calls.append(scores >= t)
        defective_all.append(defective)
        small_all.append(small)
        scores_all.append(scores)
    called = np.concatenate(calls)
    d, sm, s = np.concatenate(defective_all), np.concatenate(small_all), np.concatenate(scores_all)
    out = {}
    for name, keep in (("all", np.ones_like(d)), ("small", sm | ~d)):
        c = M.Confusion(
            tp=int((called & d & keep).sum()),
            fn=int((~called & d & keep).sum()),
            tn=int((~called & ~d & keep).sum()),
            fp=int((called & ~d & keep).sum()),
        )
        out[name] = {
            "tpr": c.tpr, "tnr": c.tnr, "acc": c.acc, "ap": M.average_precision(s[keep], d[keep]),
            "auroc": M.auroc(s[keep], d[keep]), "defective": c.tp + c.fn, "good": c.tn + c.fp,
        }  # fmt: skip
    return out


def summary(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """task -> metric name -> mean/std/defined/n over folds, plus pooled and cross-fitted figures."""
    out: dict[str, dict[str, Any]] = {}
    for task in TASKS:
        rows = sorted((r for r in results if r["task"] == task), key=lambda r: r["group"])
        if not rows:
            continue
        keys = {f"image_{s}_{k}": ("image", s, k) for s, k in IMAGE_COLUMNS}
        keys.update({f"pixel_all_{k}": ("pixel", "all", k) for k in PIXEL_COLUMNS})
        keys.update({f"pixel_small_{k}": ("pixel", "small", k) for k in ("recall", "f1")})
        s: dict[str, Any] = {name: M.summarize([_value(r, *where) for r in rows]) for name, where in keys.items()}
        s["train_seconds"] = M.summarize([float(r.get("train_seconds") or M.NAN) for r in rows])
        s["groups"] = [r["group"] for r in rows]
        if task in ("recognizer", "classifier"):
            cf = crossfit(rows)
            for sub, key in (("all", "acc"), ("small", "acc"), ("small", "tpr"), ("small", "tnr")):
                s[f"crossfit_{sub}_{key}"] = M.summarize([cf[g]["image"][sub][key] for g in sorted(cf)])
            s["pooled"] = pooled(rows)
            s["pooled_crossfit"] = pooled(rows, "crossfit") if len(rows) > 1 else None
        out[task] = s
    return out


def compact(summ: dict[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The committed summary (docs/results/NAME.json): the figures the issue asks for, per model."""
    models = {}
    for task, s in summ.items():
        m = {
            "small_acc": s["image_small_acc"]["mean"],
            "small_tpr": s["image_small_tpr"]["mean"],
            "small_tnr": s["image_small_tnr"]["mean"],
            "acc": s["image_all_acc"]["mean"],
            "ap": s["image_all_ap"]["mean"],
            "auroc": s["image_all_auroc"]["mean"],
            "train_minutes_per_group": s["train_seconds"]["mean"] / 60,
            "groups_run": s["groups"],
            "std": {k: s[f"image_{n}"]["std"] for k, n in (("small_acc", "small_acc"), ("acc", "all_acc"),
                                                           ("ap", "all_ap"), ("auroc", "all_auroc"))},
        }  # fmt: skip
        if task in ("segmenter", "deeplabv3plus"):
            m.update({f"pixel_{k}": s[f"pixel_all_{k}"]["mean"] for k in PIXEL_COLUMNS})
            m["pixel_small_f1"] = s["pixel_small_f1"]["mean"]
        if s.get("pooled"):
            m["pooled"] = s["pooled"]
        if s.get("pooled_crossfit"):
            m["pooled_crossfit"] = s["pooled_crossfit"]
            m["crossfit_small_acc"] = s["crossfit_small_acc"]["mean"]
            m["crossfit_acc"] = s["crossfit_all_acc"]["mean"]
        models[task] = m
    return {
        "format": SUMMARY_FORMAT,
        "dataset": meta.get("data_name", meta.get("data")),
        "groups": meta.get("groups"),
        "groups_run": sorted({g for s in summ.values() for g in s["groups"]}),
        "group_aware": True,
        "grouping": meta.get("grouping"),
        "hardware": meta.get("hardware"),
        "commit": meta.get("commit"),
        "command": meta.get("command"),
        "config": meta.get("config"),
        **models,
    }


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    summ = summary(results)
    commands = meta.get("commands") or [meta.get("command")]
    commits = meta.get("commits") or [meta.get("commit")]
    lines = [
        f"# Cross-validation: {meta.get('data')}",
        "",
        *(f"- command: `{c}`" for c in commands),
        f"- commit{'s' if len(commits) > 1 else ''}: {', '.join(f'`{c}`' for c in commits)}; hardware: "
        f"{'; '.join(meta.get('hardware_all') or [str(meta.get('hardware'))])}",
        f"- {meta.get('groups')} group-aware stratified folds ({meta.get('grouping')}); folds run: "
        f"{sorted({r['group'] for r in results})}",
        "- image level: ACC = (TPR + TNR) / 2; small = TPR on defective test images with 1..99 defect px, "
        "TNR on all defect-free test images; operating point chosen on each fold's validation split",
        "- pixel level (segmenters): defect class vs background at native resolution, summed over test images",
        "",
        "## Image level, mean ± std over folds (validation-chosen operating point)",
        "",
        "| model | TPR | TNR | ACC | AP | AUROC | small TPR | small TNR | small ACC | train time / fold |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, s in summ.items():
        cells = [f"{_fmt(s[f'image_{a}_{k}']['mean'])} ± {_fmt(s[f'image_{a}_{k}']['std'])}" for a, k in IMAGE_COLUMNS]
        lines.append(f"| {task} | {' | '.join(cells)} | {s['train_seconds']['mean'] / 60:.1f} min |")
    pooled_rows = [(t, s) for t, s in summ.items() if s.get("pooled")]
    if pooled_rows:
        lines += ["", "## Pooled over all test folds (every image tested once)", "",
                  "| model | operating point | TPR | TNR | ACC | small TPR | small TNR | small ACC "
                  "| defective / small / good |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for task, s in pooled_rows:
            for label, p in (("validation", s["pooled"]), ("cross-fitted", s.get("pooled_crossfit"))):
                if not p:
                    continue
                a, sm = p["all"], p["small"]
                lines.append(
                    f"| {task} | {label} | {_fmt(a['tpr'])} | {_fmt(a['tnr'])} | {_fmt(a['acc'])} | {_fmt(sm['tpr'])} "
                    f"| {_fmt(sm['tnr'])} | {_fmt(sm['acc'])} | {a['defective']} / {sm['defective']} / {a['good']} |"
                )
    pixel_tasks = [t for t in summ if t in ("segmenter", "deeplabv3plus")]
    if pixel_tasks:
        lines += ["", "## Pixel level, mean ± std over folds", "",
                  "| model | precision | recall | F1 | IoU | small-defect recall | small-defect F1 |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for task in pixel_tasks:
            s = summ[task]
            names = [f"pixel_all_{k}" for k in PIXEL_COLUMNS] + ["pixel_small_recall", "pixel_small_f1"]
            lines.append(
                f"| {task} | " + " | ".join(f"{_fmt(s[n]['mean'])} ± {_fmt(s[n]['std'])}" for n in names) + " |"
            )
    lines += ["", "## Per fold", "",
              "| fold | model | TPR | TNR | ACC | AP | AUROC | small TPR | small TNR | small ACC "
              "| pixel P | pixel R | pixel F1 | IoU | thresholds | validation (chosen epoch) | train s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(results, key=lambda r: (r["group"], TASKS.index(r["task"]))):
        image = [_fmt(_value(r, "image", a, k)) for a, k in IMAGE_COLUMNS]
        pixel = [_fmt(_value(r, "pixel", "all", k)) for k in PIXEL_COLUMNS] if "pixel" in r else ["–"] * 4
        th = ", ".join(f"{k} {v:.3g}" for k, v in r["thresholds"].items())
        lines.append(
            f"| {r['group']} | {r['task']} | {' | '.join(image)} | {' | '.join(pixel)} | {th} | {_chosen(r)} | "
            f"{(r.get('train_seconds') or 0):.0f} |"
        )
    return "\n".join(lines) + "\n"


def _chosen(result: dict[str, Any]) -> str:
    """The selection metric of the chosen checkpoint, e.g. "val_ap 0.981 (epoch 44)", epochs counted from 1 for
    readers; results written before it
    was recorded show "–"."""
    v = result.get("validation")
    if not v or v["metric"] not in v["chosen"]:
        return "–"
    return f"{v['metric']} {_fmt(v['chosen'][v['metric']])} (epoch {v['epoch'] + 1})"


def slim(result: dict[str, Any]) -> dict[str, Any]:
    """A result without what is not needed to summarise it (the per-image records keep name, truth, score)."""
    out = dict(result)
    out["records"] = [
        {k: r[k] for k in ("name", "cls", "defective", "defect_area_px", "small", "score")}
        for r in result.get("records") or []
    ]
    return out


def write_reports(out: Path, results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    doc = {"meta": meta, "summary": summary(results), "results": [slim(r) for r in results]}
    (out / "cv.json").write_text(json.dumps(jsonable(doc), indent=1) + "\n")
    (out / "cv.md").write_text(markdown(results, meta))


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from inspector.train.cli import ARCH_CHOICES, Formatter, add_group_argument, parse_scale, parse_size

    p = subparsers.add_parser(
        "cv",
        help="the paper's cross-validation protocol: models against baselines on the same folds",
        description=__doc__,
        formatter_class=Formatter,
    )
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, logs, cv.md)")
    p.add_argument("--results", type=Path, help="also write each finished fold's result (no weights) here")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    p.add_argument("--groups", type=int, default=5, help="number of folds")
    p.add_argument("--only-groups", help="comma-separated fold indices to run (e.g. one fold per day or machine)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="of all images, for validation")
    add_group_argument(p)
    p.add_argument("--seed", type=int, default=0, help="fold seed; fold g trains with seed + g")
    p.add_argument("--arch", choices=ARCH_CHOICES, default="resnet-small")
    p.add_argument("--scale", type=parse_scale, default="auto", help="see `train --help`")
    p.add_argument("--size", type=parse_size, help="see `train --help`")
    p.add_argument("--classifier-size", type=parse_size, default=(224, 224), help="the squashing baseline's input")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--segmenter-epochs", type=int, help="epochs for segmenter/deeplabv3plus (default: --epochs)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--crop", type=int, default=-1, help="see `train --help` (-1: per task)")
    p.add_argument("--aux-weight", type=float, default=1.0, help="see `train --help`")
    p.add_argument("--hard-negatives", type=float, default=0.0, help="see `train --help`")
    p.add_argument("--output-stride", type=int, choices=(8, 16, 32), default=16)
    p.add_argument("--select", choices=("best", "last"), default="best")
    p.add_argument(
        "--max-minutes", type=float, default=0.0, help="training time limit per model and fold (0 = the schedule)"
    )
    p.add_argument("--no-augment", action="store_true")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other training setting (a TrainConfig field, see `train --help`), e.g. --set paste=0.5",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--resume", action="store_true", help="reuse finished (fold, task) results in OUT")
    p.set_defaults(func=run_cv)

    s = subparsers.add_parser(
        "cv-summary",
        help="merge the committed per-fold results of a cv run into one summary (JSON and Markdown)",
        description=__doc__,
        formatter_class=Formatter,
    )
    s.add_argument(
        "--results",
        required=True,
        action="append",
        help="folder of groupG-TASK.json files (cv --results); repeat it to merge runs of the same protocol, e.g. "
        "a baseline retrained with more epochs beside the other model's folder; FOLDER:TASK[,TASK] takes only "
        "those models from it. A (fold, model) found twice is refused",
    )
    s.add_argument("--out", required=True, type=Path, help="summary JSON to write (e.g. docs/results/NAME.json)")
    s.add_argument("--markdown", type=Path, help="also write the tables here")
    s.set_defaults(func=run_summary)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """['paste=0.5', 'pad=reflect'] -> {'paste': 0.5, 'pad': 'reflect'}, typed by TrainConfig's defaults."""
    import dataclasses

    from inspector.train.recipe import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    defaults = TrainConfig()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in fields or key in ("task", "augment"):
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with a training setting (see `train --help`)")
        current = getattr(defaults, key)
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                value: Any = text.lower() in ("true", "1", "yes")
            elif isinstance(current, int):
                value = int(text)
            elif isinstance(current, float):
                value = float(text)
            else:
                value = text
        except ValueError:
            raise SystemExit(f"--set {item!r}: {text!r} is not a {type(current).__name__}") from None
        out[key] = value
    return out


def run_cv(args: argparse.Namespace) -> int:
    from inspector.train.augment import AugmentConfig
    from inspector.train.datasets import load_dataset
    from inspector.train.export import git_commit

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; choose from {TASKS}")
    samples, classes = load_dataset(args.data)
    samples, grouping = assign_groups(samples, args.data, args.group_by)
    print(grouping, flush=True)
    splits = kfold(samples, args.groups, args.val_fraction, args.seed)
    if args.only_groups:
        wanted = {int(g) for g in args.only_groups.split(",")}
        splits = [s for s in splits if s.fold in wanted]
    segmenter_epochs = args.segmenter_epochs or args.epochs
    base_cfg: dict[str, Any] = {
        "arch": args.arch,
        "scale": args.scale,
        "size": args.size,
        "epochs": args.epochs,
        "batch": args.batch,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "crop": args.crop,
        "aux_weight": args.aux_weight,
        "hard_negatives": args.hard_negatives,
        "output_stride": args.output_stride,
        "augment": AugmentConfig(enabled=not args.no_augment),
        "threads": args.threads,
        "device": args.device,
        "amp": args.amp,
        "seed": args.seed,
        "select": args.select,
        "max_minutes": args.max_minutes,
        "plots": True,
        **parse_sets(args.set),
        "per_task": {
            "classifier": {"size": args.classifier_size, "scale": None if args.scale == "auto" else args.scale},
            "segmenter": {"epochs": segmenter_epochs},
            "deeplabv3plus": {"epochs": segmenter_epochs},
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    started, wall = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic()
    meta = {
        "data": str(args.data),
        "data_name": args.data.resolve().name,
        "dataset_summary": summarize(samples),
        "classes": classes,
        "grouping": grouping,
        "command": shlex.join(["inspector-train", *sys.argv[1:]]) if sys.argv else "",
        "commit": git_commit(),
        "hardware": hardware(args.device, args.threads),
        "started": started,
        "groups": args.groups,
        "val_fraction": args.val_fraction,
        "tasks": tasks,
        "config": jsonable({k: (vars(v) if isinstance(v, AugmentConfig) else v) for k, v in base_cfg.items()}),
    }
    results = []
    for split in splits:
        for task in tasks:
            print(f"== fold {split.fold}: {task}; train {len(split.train)}, val {len(split.val)}, "
                  f"test {len(split.test)} images", flush=True)  # fmt: skip
            r = run_group_task(split, task, base_cfg, classes, args.out / f"group{split.fold}" / task, args.resume)
            results.append(r)
            meta["wall_seconds"] = time.monotonic() - wall
            write_reports(args.out, results, meta)  # after every model: a killed run still leaves its tables
            if args.results:
                args.results.mkdir(parents=True, exist_ok=True)
                doc = {"meta": meta, "result": slim(r)}
                (args.results / f"group{split.fold}-{task}.json").write_text(json.dumps(jsonable(doc), indent=1) + "\n")
    print((args.out / "cv.md").read_text())
    return 0


def _protocol(meta: dict[str, Any]) -> dict[str, Any]:
    """What makes two results comparable: the same data, folds (count, grouping, seed) and validation share."""
    keys = {k: meta.get(k) for k in ("data_name", "groups", "grouping", "val_fraction")}
    return {**keys, "seed": (meta.get("config") or {}).get("seed")}


def load_results(folders: Path | str | list[Path | str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The committed per-fold results of one protocol, from one folder or several (`FOLDER:TASK,...` takes only
    those models); refuses results of different protocols mixed, and a (fold, model) found twice."""
    files = []
    for spec in folders if isinstance(folders, list) else [folders]:
        folder, _, only = str(spec).partition(":")
        tasks = set(only.split(",")) if only else None
        if tasks and not tasks <= set(TASKS):
            raise SystemExit(f"{spec}: unknown model(s) {sorted(tasks - set(TASKS))}; choose from {', '.join(TASKS)}")
        found = [f for f in sorted(Path(folder).glob("group*-*.json")) if not tasks or f.stem.split("-", 1)[1] in tasks]
        if not found:
            raise SystemExit(f"{spec}: no group*-TASK.json results")
        files += found
    results, metas = [], []
    for f in files:
        doc = json.loads(f.read_text())
        results.append(doc["result"])
        metas.append(doc["meta"])
    first = _protocol(metas[0])
    for f, m in zip(files, metas, strict=True):
        if _protocol(m) != first:
            raise SystemExit(f"{f}: a different protocol ({_protocol(m)} vs {first})")
    seen: dict[tuple[int, str], Path] = {}
    for f, r in zip(files, results, strict=True):
        key = (int(r["group"]), str(r["task"]))
        if key in seen:
            raise SystemExit(f"fold {key[0]} {key[1]} is in both {seen[key]} and {f}: merge one of them")
        seen[key] = f
    meta = dict(metas[-1])
    meta["commits"] = sorted({m.get("commit") or "?" for m in metas})
    meta["commands"] = sorted({m.get("command") or "?" for m in metas})
    meta["hardware_all"] = sorted({m.get("hardware") or "?" for m in metas})
    return results, meta


def run_summary(args: argparse.Namespace) -> int:
    results, meta = load_results(args.results)
    doc = compact(summary(results), meta)
    doc["commits"] = meta["commits"]
    doc["hardware"] = "; ".join(meta["hardware_all"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(jsonable(doc), indent=1) + "\n")
    table = markdown(results, meta)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    return 0
