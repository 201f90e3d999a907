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

PLUGIN_MODULES = ("evaluate", "cv", "export")
TASK_CHOICES = ("recognizer", "segmenter", "classifier", "deeplabv3plus")
ARCH_CHOICES = ("resnet18", "resnet34", "resnet50", "resnet-tiny")


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
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="data set folder (Magnetic Tile or generic layout)")
    p.add_argument("--val-data", type=Path, help="separate validation set; default: --val-fraction of --data")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held out per class for checkpoint selection")
    p.add_argument("--out", required=True, type=Path, help="output folder (checkpoints, log, plots)")
    p.add_argument("--task", choices=TASK_CHOICES, default=d.task)
    p.add_argument("--arch", choices=ARCH_CHOICES, default=d.arch)
    p.add_argument("--size", type=parse_size, default=d.size, help="network input N or HxW (multiples of 32)")
    p.add_argument("--color", choices=("auto", "gray", "rgb"), default=d.color)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch, help="0 = a full pass")
    p.add_argument("--batch", type=int, default=d.batch, help="defective/genuine pairs per step and process")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default=d.lr_schedule)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 coefficient")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads per process")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--keep-every", type=int, default=d.keep_every, help="keep OUT/epoch_NNN.pt every N epochs")
    p.add_argument("--crop", type=int, default=d.crop, help="segmenter branch crop (multiple of 32)")
    p.add_argument("--crop-defect-bias", type=float, default=d.crop_defect_bias)
    p.add_argument("--output-stride", type=int, choices=(8, 16, 32), default=d.output_stride)
    p.add_argument("--block-min-pixels", type=int, default=d.block_min_pixels)
    p.add_argument("--blocks-per-image", type=int, default=d.blocks_per_image)
    p.add_argument(
        "--normal-from-defective",
        type=float,
        default=d.normal_from_defective,
        help="share of normal blocks drawn from the defective image itself (0 = all from the genuine partner)",
    )
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--rotation", type=float, default=a.rotation_deg, help="degrees, uniform in +-")
    p.add_argument("--perspective", type=float, default=a.perspective)
    p.add_argument("--brightness", type=float, default=a.brightness)
    p.add_argument("--saturation", type=float, default=a.saturation)
    p.add_argument("--hflip", action="store_true")
    p.add_argument("--vflip", action="store_true")
    p.set_defaults(func=run_train)


def config_from_args(args: argparse.Namespace):
    from inspector.train.augment import AugmentConfig
    from inspector.train.recipe import TrainConfig

    augment = AugmentConfig(
        enabled=not args.no_augment,
        rotation_deg=args.rotation,
        perspective=args.perspective,
        brightness=args.brightness,
        saturation=args.saturation,
        hflip=args.hflip,
        vflip=args.vflip,
    )
    return TrainConfig(
        task=args.task,
        arch=args.arch,
        size=args.size,
        color=args.color,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch=args.batch,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        weight_decay=args.weight_decay,
        seed=args.seed,
        workers=args.workers,
        threads=args.threads,
        augment=augment,
        block_min_pixels=args.block_min_pixels,
        blocks_per_image=args.blocks_per_image,
        normal_from_defective=args.normal_from_defective,
        crop=args.crop,
        crop_defect_bias=args.crop_defect_bias,
        output_stride=args.output_stride,
        device=args.device,
        amp=args.amp,
        resume=args.resume,
        plots=not args.no_plots,
        keep_every=args.keep_every,
    )


def run_train(args: argparse.Namespace) -> int:
    from inspector.train.datasets import load_dataset, stratified_split
    from inspector.train.recipe import train

    cfg = config_from_args(args)
    samples, classes = load_dataset(args.data)
    if args.val_data:
        val, val_classes = load_dataset(args.val_data)
        if set(val_classes) - set(classes):
            raise SystemExit(f"validation classes {sorted(set(val_classes) - set(classes))} not in training data")
    else:
        samples, val = stratified_split(samples, args.val_fraction, cfg.seed)
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
