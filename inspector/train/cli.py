"""`inspector-train`: train, measure-resize, and the evaluation/export subcommands.

    inspector-train train --data ../shared/datasets/magnetic-tile --task recognizer --arch resnet50 \\
        --size 224 --epochs 30 --out runs/rec-r50 [--resume] [--seed 0]
    torchrun --nproc_per_node 4 -m inspector.train.cli train ...      # DistributedDataParallel
    inspector-train measure-resize --data ../shared/datasets/magnetic-tile --sizes 224,320,384

Subcommands of other modules (evaluate, cv, export) register themselves: each such module in this package
exposes ``add_parser(subparsers)``, which adds its parser and sets ``func`` (called with the parsed args,
returning an exit code or None). A module that is not there (yet) simply adds no subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

PLUGIN_MODULES = ("evaluate", "cv", "export", "import_archive")
TASK_CHOICES = ("recognizer", "segmenter", "classifier", "deeplabv3plus")
ARCH_CHOICES = ("resnet-tiny", "resnet-small", "resnet18", "resnet34", "resnet50")  # models.ARCHS, without torch


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Module docstrings as written, and every option's default in --help."""


def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '224x320' -> (224, 320) (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, not {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or any(p <= 0 or p % 32 for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r}: height and width must be positive multiples of 32")
    return parts[0], parts[1]


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    from inspector.train.augment import AugmentConfig
    from inspector.train.recipe import TrainConfig

    d, a = TrainConfig(), AugmentConfig()
    p = subparsers.add_parser(
        "train",
        help="train a recognizer, segmenter or baseline",
        description=__doc__,
        formatter_class=Formatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, type=Path, help="data set folder (Magnetic Tile or generic layout)")
    g.add_argument("--val-data", type=Path, help="separate validation set (default: --val-fraction of --data)")
    g.add_argument(
        "--val-fraction", type=float, default=0.15, help="held out (whole parts, per class) for checkpoint selection"
    )
    add_group_argument(g)
    g.add_argument("--out", required=True, type=Path, help="output folder (checkpoints, log, plots)")
    g = p.add_argument_group("model and input")
    g.add_argument("--task", choices=TASK_CHOICES, default=d.task)
    g.add_argument("--arch", choices=ARCH_CHOICES, default=d.arch, help="see docs/TRAINING.md, 'model ladder'")
    g.add_argument(
        "--scale",
        type=parse_scale,
        default="auto",
        help="network px per image px: 1.0 = native resolution (default for all but the classifier); 'squash' "
        "resizes every image to --size whatever its aspect ratio (the paper's classifier baseline, its default)",
    )
    g.add_argument(
        "--size",
        type=parse_size,
        help="network input N or HxW, multiples of 32 (default: the smallest that holds every image at --scale; "
        "224 when squashing)",
    )
    g.add_argument("--color", choices=("auto", "gray", "rgb"), default=d.color)
    g.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=d.standardize,
        help="standardise each image's brightness and contrast inside the network",
    )
    g.add_argument(
        "--output-stride", type=int, choices=(8, 16, 32), default=d.output_stride, help="resnet50 segmenters"
    )
    g.add_argument(
        "--pad",
        choices=("zero", "reflect"),
        default=d.pad,
        help="what surrounds a placed image in the input: the image mirrored at its edges, or zeros (whose edge a "
        "model can learn as a defect cue on images of mixed sizes: docs/TRAINING.md)",
    )
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch, help="0 = as many images as the data set")
    g.add_argument("--batch", type=int, default=d.batch, help="images per step and process")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--lr-schedule", choices=("cosine", "constant"), default=d.lr_schedule)
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 coefficient")
    g.add_argument(
        "--select",
        choices=("best", "last"),
        default=d.select,
        help="checkpoint to keep as best.pt: the best on validation, or the schedule's last epoch",
    )
    g.add_argument("--max-minutes", type=float, default=d.max_minutes, help="stop after this much training time")
    g.add_argument("--ema", type=float, default=d.ema, help="weight EMA decay per step (0 = off): what is exported")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("recipe")
    g.add_argument(
        "--crop",
        type=int,
        default=-1,
        help="recognizer: NxN training windows (0: whole images); segmenter: branch crop; -1: per task (320 / 128)",
    )
    g.add_argument(
        "--window", type=int, default=d.window, help="segmenter/deeplabv3plus: NxN training windows (0 = whole images)"
    )
    g.add_argument(
        "--defect-bias", type=float, default=-1.0, help="P(a defective window holds a defect); -1: per task (0 / 0.7)"
    )
    g.add_argument("--defective-fraction", type=float, default=d.defective_fraction, help="of each batch")
    g.add_argument("--block-min-pixels", type=int, default=d.block_min_pixels)
    g.add_argument("--aux-weight", type=float, default=d.aux_weight, help="recognizer: dense mask loss (0 = off)")
    g.add_argument("--aux-dilate", type=int, default=d.aux_dilate, help="recognizer: mask dilation (px) for it")
    g.add_argument(
        "--window-loss",
        type=float,
        default=d.window_loss,
        help="segmenter: weight of a loss on the whole window's pixels beside the crop's (0 = off)",
    )
    g.add_argument(
        "--hard-negatives",
        type=float,
        default=d.hard_negatives,
        help="recognizer: 0 = all normal blocks, k = hardest k x",
    )
    g.add_argument(
        "--ignore-ring", type=int, default=d.ignore_ring, help="recognizer: normal blocks this near a defect unscored"
    )
    g.add_argument("--image-weight", type=float, default=d.image_weight, help="recognizer: highest-block image loss")
    g.add_argument(
        "--positive-weight",
        choices=("cell", "image"),
        default=d.positive_weight,
        help="recognizer: defective cells pooled, or each defective window weighing the same",
    )
    g.add_argument(
        "--paste", type=float, default=d.paste, help="recognizer: P(a real defect is pasted into a defect-free image)"
    )
    g = p.add_argument_group("augmentation")
    g.add_argument("--no-augment", action="store_true")
    g.add_argument("--rotation", type=float, default=a.rotation_deg, help="degrees, uniform in +-")
    g.add_argument("--zoom", type=float, default=a.zoom, help="scale factor in 1 +- this")
    g.add_argument("--perspective", type=float, default=a.perspective, help="corner jitter, fraction of the crop")
    g.add_argument("--brightness", type=float, default=a.brightness)
    g.add_argument("--contrast", type=float, default=a.contrast)
    g.add_argument("--saturation", type=float, default=a.saturation)
    g.add_argument("--no-hflip", action="store_true", help="parts whose mirror image is not a valid part")
    g.add_argument("--no-vflip", action="store_true")
    g = p.add_argument_group("machine")
    g.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads per process")
    g.add_argument(
        "--no-cache", action="store_true", help="decode images on every use instead of once (data larger than memory)"
    )
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    g.add_argument(
        "--amp",
        action="store_true",
        help=(
            "bfloat16 autocast: CUDA, or a CPU with native bfloat16 (AVX512-BF16/AMX; ignored with a warning "
            "elsewhere). docs/BENCHMARKS.md gives its speed"
        ),
    )
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=d.channels_last,
        help="train in the channels-last (NHWC) memory layout; docs/BENCHMARKS.md gives its speed",
    )
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--keep-every", type=int, default=d.keep_every, help="keep OUT/epoch_NNN.pt every N epochs")
    p.set_defaults(func=run_train)


def parse_scale(text: str) -> float | str | None:
    """'auto' (per task), 'squash' (None) or a positive number."""
    if text in ("auto", "squash"):
        return None if text == "squash" else "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be a number, 'auto' or 'squash', not {text!r}") from None
    if not 0.05 <= value <= 4:
        raise argparse.ArgumentTypeError(f"scale {value} must lie in [0.05, 4]")
    return value


def add_group_argument(parser) -> None:
    parser.add_argument(
        "--group-by",
        metavar="REGEX",
        help="part id from each file name (first capture group, else the match): images of one part never land "
        "on two sides of a split. Default: the data set's groups.csv, else one group per image",
    )


def config_from_args(args: argparse.Namespace):
    from inspector.train.augment import AugmentConfig
    from inspector.train.recipe import TrainConfig, default_scale

    augment = AugmentConfig(
        enabled=not args.no_augment,
        rotation_deg=args.rotation,
        zoom=args.zoom,
        perspective=args.perspective,
        brightness=args.brightness,
        contrast=args.contrast,
        saturation=args.saturation,
        hflip=not args.no_hflip,
        vflip=not args.no_vflip,
    )
    return TrainConfig(
        task=args.task,
        arch=args.arch,
        scale=default_scale(args.task) if args.scale == "auto" else args.scale,
        size=args.size,
        color=args.color,
        standardize=args.standardize,
        pad=args.pad,
        ema=args.ema,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch=args.batch,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        seed=args.seed,
        threads=args.threads,
        cache_images=not args.no_cache,
        augment=augment,
        defective_fraction=args.defective_fraction,
        crop=args.crop,
        defect_bias=args.defect_bias,
        window=args.window,
        block_min_pixels=args.block_min_pixels,
        aux_weight=args.aux_weight,
        window_loss=args.window_loss,
        aux_dilate=args.aux_dilate,
        hard_negatives=args.hard_negatives,
        ignore_ring=args.ignore_ring,
        image_weight=args.image_weight,
        positive_weight=args.positive_weight,
        paste=args.paste,
        output_stride=args.output_stride,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        resume=args.resume,
        plots=not args.no_plots,
        keep_every=args.keep_every,
        select=args.select,
        max_minutes=args.max_minutes,
    )


def run_train(args: argparse.Namespace) -> int:
    from inspector.train.datasets import load_dataset
    from inspector.train.recipe import train
    from inspector.train.splits import Split, assign_groups, check_disjoint, holdout

    cfg = config_from_args(args)
    samples, classes = load_dataset(args.data)
    samples, how = assign_groups(samples, args.data, args.group_by)
    print(how, file=sys.stderr)
    if args.val_data:
        val, val_classes = load_dataset(args.val_data)
        if set(val_classes) - set(classes):
            raise SystemExit(f"validation classes {sorted(set(val_classes) - set(classes))} not in training data")
        overlap = {s.image.resolve() for s in val} & {s.image.resolve() for s in samples}
        if overlap:
            raise SystemExit(f"{len(overlap)} images are in both --data and --val-data")
    else:
        samples, val = holdout(samples, args.val_fraction, cfg.seed)
        if os.environ.get("RANK", "0") == "0":
            # The exact validation images, for `inspector-train evaluate --val-split` to choose thresholds on.
            split = {
                "how": how,
                "train": sorted(map(str, (s.image for s in samples))),
                "val": sorted(map(str, (s.image for s in val))),
            }
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "split.json").write_text(json.dumps(split, indent=0) + "\n")
    check_disjoint([Split(0, cfg.seed, samples, val, [])])
    best = train(cfg, samples, val, classes, args.out)
    if os.environ.get("RANK", "0") == "0":
        print(f"best checkpoint: {best}")
    return 0


def add_measure_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("measure-resize", help="how small defects survive resizing to network sizes")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--sizes", default="224,320,384", help="comma-separated N or HxW")
    p.add_argument("--small-px", type=int, default=100, help="a defect below this many pixels is small")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_measure)


def run_measure(args: argparse.Namespace) -> int:
    from inspector.train.datasets import load_dataset, read_mask
    from inspector.train.labels import measure_resize

    samples, _ = load_dataset(args.data)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    groups = {
        f"small (<{args.small_px} px)": [s for s in samples if 0 < s.defect_area_px < args.small_px],
        "all defective": [s for s in samples if s.defect_area_px > 0],
    }
    rows = []
    for name, group in groups.items():
        masks = [read_mask(s.mask, s.mask_threshold) for s in group if s.mask is not None]
        rows += [{"group": name, **r} for r in measure_resize(masks, sizes)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(
        "| defects | input | images | kept by nearest resize | median peak coverage | peak < 0.5 |"
        " median thinner side (net px) | blocks kept | median downscale | tiles per image |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['group']} | {r['height']}x{r['width']} | {r['masks']} | {r['nearest_kept']:.1%} | "
            f"{r['area_peak_median']:.2f} | {r['diluted']:.1%} | {r['min_side_median']:.1f} | "
            f"{r['blocks_kept']:.0%} | {r['scale_median']:.2f} | {r['tiles_mean']:.2f} |"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inspector-train", description="Train, evaluate and export models.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_parser(subparsers)
    add_measure_parser(subparsers)
    for name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(f"inspector.train.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"inspector.train.{name}":
                continue  # not written (yet): no such subcommand
            raise
        add = getattr(module, "add_parser", None)
        if add is not None:
            add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
