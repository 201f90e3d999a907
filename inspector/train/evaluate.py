"""`inspector-train evaluate`: a trained checkpoint (or an exported ONNX model) on a test set, at an operating
point chosen on validation data, with the paper's metrics and the line-config thresholds that reach it.

    inspector-train evaluate --model runs/rec/best.pt --data TEST_DIR --val-data VAL_DIR \\
        --out runs/rec/eval.json --yaml runs/rec/decision.yaml

What an image's score is, per task (higher = more likely defective; defective iff score >= threshold):
- recognizer: the highest block score of its block map (the daemon's "any block >= block_threshold");
- classifier (baseline): its P(defective);
- segmenter / deeplabv3plus: the area, in frame pixels, of its largest blob — pixels with P(defect) =
  1 - P(background) >= pixel_threshold on the network's output grid, 8-connected, each output pixel counting
  the frame area it covers — computed exactly as the daemon's `inspector.decision` does, so min_area_px
  means the same here and on the line.

Input. As the model was trained and as the daemon feeds it: squashed to the input size (the classifier
baseline), or resized by the model's scale and placed at the input's top-left corner with zeros around it
(native-resolution models); only the blocks and pixels that cover the image are scored.

Operating point. Never chosen on the test set, never guessed. With validation data (--val-data, or --val-split,
the split.json `inspector-train train` wrote: exactly the images training held out):
- block_threshold (recognizer) / the classifier's threshold: maximises ACC = (TPR + TNR) / 2 on validation;
- pixel_threshold (segmenters): maximises pixel F1 on validation (grid 0.001 within [0.05, 0.95]);
- min_area_px (segmenters): then maximises image-level ACC of "largest blob >= min_area_px" on validation.
Ties go to the more sensitive setting. Without validation data only thresholds given on the command line are
used (the report says they were not tuned); with neither, evaluate refuses rather than report metrics at 0.5.
Fewer than 20 defective validation images get a warning: `inspector-train cv` reports cross-fitted thresholds.

Subsets. "all": every test image. "small": the paper's small-defect subset — TPR over the defective test
images whose defect covers 1..99 pixels of the full-resolution mask (datasets.read_mask), TNR over **all**
defect-free test images, ACC their mean. Defective images whose mask is empty (4 in Magnetic Tile's Uneven
folder) count as defective in "all" and belong to no size subset; they are left out of pixel metrics.

Pixel metrics (segmenters) are computed at each image's native resolution: the network's P(defect) is resized
bilinearly to the image size and thresholded, against the unresized mask, so a few-pixel defect is scored on
its own pixels. "all" sums over every test image with pixel labels (defect-free ones included: their false
positives count); "small" over the small-defect images only (how well tiny defects are outlined).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspector.decision import GridMap
from inspector.preprocess import place_image, resize_image
from inspector.train import metrics as M
from inspector.train.datasets import Sample, image_pixel_format, read_image, read_mask

SMALL_DEFECT_PX = 100  # the paper's small defect: 1..99 defect pixels
IMAGE_TASKS = ("recognizer", "classifier")
PIXEL_TASKS = ("segmenter", "deeplabv3plus")


def is_small(sample: Sample) -> bool:
    return sample.defective and 0 < sample.defect_area_px < SMALL_DEFECT_PX


# --------------------------------------------------------------------------------------------- models


@dataclass
class ModelInfo:
    task: str  # recognizer | classifier | segmenter | deeplabv3plus
    arch: str
    size: tuple[int, int]  # network input (height, width)
    color: str  # gray | rgb
    classes: list[str]  # defect classes (no background)
    source: str  # the checkpoint or ONNX file
    seed: int | None = None
    scale: float | None = None  # fit place: network px per image px; None: squashed to `size`
    pad: str = "zero"  # fit place: what surrounds the image in the input
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pixel_task(self) -> bool:
        return self.task in PIXEL_TASKS


class TorchModel:
    """A checkpoint through `Deployed` (uint8 NHWC in, probabilities out): exactly what export writes."""

    def __init__(self, checkpoint: str | Path, threads: int = 2, device: str = "cpu"):
        import torch

        from inspector.train.recipe import deployed_from_checkpoint

        torch.set_num_threads(threads)
        self._torch = torch
        self.device = torch.device(device)
        deployed, ckpt = deployed_from_checkpoint(checkpoint)
        self.net = deployed.to(self.device).eval()
        self.checkpoint = ckpt
        self.info = ModelInfo(
            task=ckpt["task"],
            arch=ckpt["arch"],
            size=(int(ckpt["size"][0]), int(ckpt["size"][1])),
            color=ckpt["color"],
            classes=list(ckpt["classes"]),
            source=str(checkpoint),
            seed=ckpt.get("seed"),
            scale=ckpt.get("scale"),
            pad=ckpt.get("pad", "zero"),
            extra={"epoch": ckpt.get("epoch"), "train_seconds": ckpt.get("train_seconds")},
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.net(self._torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


class OnnxModel:
    """An exported model through ONNX Runtime, configured from its manifest (no torch needed)."""

    def __init__(self, path: str | Path, threads: int = 2):
        import onnxruntime as ort

        from inspector.manifest import read_manifest

        self.manifest = manifest = read_manifest(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = manifest.input.name
        self.output_name = manifest.outputs[0].name
        task = manifest.task
        # A classifier baseline is exported as a recognizer with one block covering the whole input.
        if task == "recognizer" and manifest.block_size == manifest.input.height == manifest.input.width:
            task = "classifier" if "classifier" in manifest.architecture else task
        if task == "segmenter" and manifest.architecture.startswith("deeplabv3plus-aspp"):
            task = "deeplabv3plus"
        training = manifest.training
        self.info = ModelInfo(
            task=task,
            arch=manifest.architecture,
            size=(manifest.input.height, manifest.input.width),
            color=manifest.preprocessing.color,
            classes=manifest.classes[1:] if manifest.task == "segmenter" else [],
            source=str(path),
            seed=training.seed if training else None,
            scale=manifest.preprocessing.scale if manifest.preprocessing.fit == "place" else None,
            pad=manifest.preprocessing.pad,
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]


def open_model(path: str | Path, threads: int = 2) -> TorchModel | OnnxModel:
    return OnnxModel(path, threads) if str(path).endswith(".onnx") else TorchModel(path, threads)


def network_input(image: np.ndarray, info: ModelInfo) -> tuple[np.ndarray, tuple[int, int]]:
    """A loaded image -> ((h, w, c) uint8 network input, (h, w) the image covers in it): the shared
    preprocessing (squashed, or placed at the model's scale), nothing else."""
    fmt = image_pixel_format(image)
    if info.scale is None:
        return resize_image(image, info.size, pixel_format=fmt, color=info.color), info.size  # type: ignore[arg-type]
    return place_image(image, info.scale, info.size, pixel_format=fmt, color=info.color, pad=info.pad)  # type: ignore[arg-type]


def predict(
    model: TorchModel | OnnxModel, samples: Sequence[Sample], batch: int = 8
) -> Iterator[tuple[Sample, np.ndarray, np.ndarray, tuple[int, int]]]:
    """Yield (sample, full-resolution image, model output for it, (h, w) of the input the image covers) in
    order, running `batch` images at a time."""
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        images = [read_image(s.image) for s in chunk]
        inputs = [network_input(im, model.info) for im in images]
        out = model(np.stack([x for x, _ in inputs]))
        yield from zip(chunk, images, out, [placed for _, placed in inputs], strict=True)


def valid_output(out: np.ndarray, placed: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The part of an output map (..., oh, ow) that covers image pixels: the zero border is never scored."""
    oh, ow = out.shape[-2:]
    rows = max(1, math.ceil(placed[0] * oh / size[0]))
    cols = max(1, math.ceil(placed[1] * ow / size[1]))
    return out[..., :rows, :cols]


# ------------------------------------------------------------------------------------------- scoring


@dataclass
class ImageRecord:
    name: str
    cls: str
    defective: bool
    defect_area_px: int
    small: bool
    score: float


@dataclass
class Scored:
    records: list[ImageRecord]
    pixels_all: M.PixelAccumulator
    pixels_small: M.PixelAccumulator
    seconds: float

    def arrays(self, subset: str = "all") -> tuple[np.ndarray, np.ndarray]:
        rows = self.records
        if subset == "small":
            rows = [r for r in rows if r.small or not r.defective]
        return np.array([r.score for r in rows], np.float64), np.array([r.defective for r in rows], bool)


def defect_probability(output: np.ndarray) -> np.ndarray:
    """pixel_scores (C, h, w) -> P(any defect) = 1 - P(background), (h, w) float32."""
    return (1.0 - output[0]).astype(np.float32)


def largest_blob_px(prob: np.ndarray, pixel_threshold: float, frame_size: tuple[int, int]) -> int:
    """Area in frame pixels of the largest 8-connected blob with P(defect) >= threshold, as inspector.decision."""
    hit = (prob >= pixel_threshold).astype(np.uint8)
    if not hit.any():
        return 0
    _, _, stats, _ = cv2.connectedComponentsWithStats(hit, connectivity=8, ltype=cv2.CV_32S)
    grid = GridMap.for_input(frame_size, prob.shape)
    return grid.area(int(stats[1:, cv2.CC_STAT_AREA].max()))


def score(
    model: TorchModel | OnnxModel,
    samples: Sequence[Sample],
    *,
    pixel_threshold: float | None = None,
    pixels: bool = True,
    batch: int = 8,
) -> Scored:
    """Run the model over `samples`: one image score each and (segmenters, `pixels`) the pixel histograms.

    Segmenters need `pixel_threshold` for their image score (the largest blob); without one the scores are 0.
    Memory stays constant in the number of images: nothing but the histograms and one record per image is kept.
    """
    info = model.info
    records: list[ImageRecord] = []
    acc_all, acc_small = M.PixelAccumulator(), M.PixelAccumulator()
    started = time.monotonic()
    for sample, image, raw, placed in predict(model, samples, batch):
        out = valid_output(raw, placed, info.size)
        if info.pixel_task:
            prob = defect_probability(out)
            frame = image.shape[:2]
            value = float(largest_blob_px(prob, pixel_threshold, frame)) if pixel_threshold is not None else 0.0
            if pixels and sample.has_pixel_labels:
                truth = read_mask(sample.mask) if sample.mask is not None else np.zeros(frame, bool)
                full = cv2.resize(prob, (frame[1], frame[0]), interpolation=cv2.INTER_LINEAR)
                acc_all.update(full, truth)
                if is_small(sample):
                    acc_small.update(full, truth)
        else:
            value = float(np.max(out))  # recognizer: highest block; classifier: its one (1x1) score
        records.append(
            ImageRecord(sample.image.name, sample.cls, sample.defective, sample.defect_area_px, is_small(sample), value)
        )
    return Scored(records, acc_all, acc_small, time.monotonic() - started)


# ------------------------------------------------------------------------------------ operating point


def choose_thresholds(
    model: TorchModel | OnnxModel, val_samples: Sequence[Sample], batch: int = 8
) -> dict[str, float | int]:
    """The operating point, from validation images only (see the module docstring)."""
    if model.info.pixel_task:
        first = score(model, val_samples, batch=batch)
        pixel_threshold = first.pixels_all.best_threshold()
        second = score(model, val_samples, pixel_threshold=pixel_threshold, pixels=False, batch=batch)
        areas, labels = second.arrays()
        # Predicted defective iff largest blob >= min_area_px; areas are integers, so round the cut up.
        cut = M.best_threshold(areas, labels)
        return {"pixel_threshold": pixel_threshold, "min_area_px": max(1, math.ceil(cut))}
    scores, labels = score(model, val_samples, batch=batch).arrays()
    return {"block_threshold": M.best_threshold(scores, labels)}


def image_threshold(info: ModelInfo, thresholds: dict[str, float | int]) -> float:
    return float(thresholds["min_area_px"] if info.pixel_task else thresholds["block_threshold"])


def report(
    model: TorchModel | OnnxModel,
    test_samples: Sequence[Sample],
    thresholds: dict[str, float | int],
    *,
    tuned_on: str,
    batch: int = 8,
    keep_records: bool = True,
) -> dict[str, Any]:
    """All metrics of the module docstring on `test_samples` at `thresholds`, as one JSON-ready dict."""
    info = model.info
    scored = score(model, test_samples, pixel_threshold=thresholds.get("pixel_threshold"), batch=batch)
    t = image_threshold(info, thresholds)
    out: dict[str, Any] = {
        "model": {
            "task": info.task,
            "arch": info.arch,
            "input": list(info.size),
            "color": info.color,
            "classes": info.classes,
            "source": info.source,
            "seed": info.seed,
            **info.extra,
        },
        "thresholds": dict(thresholds),
        "thresholds_tuned_on": tuned_on,
        "image_score": "largest blob area (frame px)"
        if info.pixel_task
        else "max block score"
        if info.task == "recognizer"
        else "P(defective)",
        "images": len(test_samples),
        "image": {},
        "seconds": scored.seconds,
        "images_per_second": len(test_samples) / scored.seconds if scored.seconds else M.NAN,
    }
    for subset in ("all", "small"):
        scores, labels = scored.arrays(subset)
        out["image"][subset] = M.image_metrics(scores, labels, t)
    if info.pixel_task:
        pt = float(thresholds["pixel_threshold"])
        out["pixel"] = {"all": scored.pixels_all.metrics(pt), "small": scored.pixels_small.metrics(pt)}
    if keep_records:
        out["records"] = [asdict(r) for r in scored.records]
    return out


def jsonable(obj: Any) -> Any:
    """NaN (an undefined metric) -> null, numpy scalars -> Python: strict JSON that any tool reads."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def exported_thresholds(thresholds: dict[str, float | int]) -> dict[str, float | int]:
    """The operating point as a line config holds it: probabilities to 4 decimals, areas in whole pixels.

    evaluate reports at these values, not at the unrounded ones it chose, so that its per-image decisions are
    the daemon's with the `decision:` block it writes (a test image scoring between the two would differ)."""
    keys = [k for k in ("block_threshold", "pixel_threshold", "min_area_px") if k in thresholds]
    return {k: (int(thresholds[k]) if k == "min_area_px" else round(float(thresholds[k]), 4)) for k in keys}


def decision_yaml(thresholds: dict[str, float | int], comment: str = "") -> str:
    """The `decision:` block for a line config; validated against DecisionConfig before it is written."""
    from inspector.config import DecisionConfig

    values = exported_thresholds(thresholds)
    DecisionConfig(**values)  # refuses anything the daemon would refuse
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    lines.append("decision:")
    lines += [f"  {k}: {v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def format_summary(rep: dict[str, Any]) -> str:
    m = rep["model"]
    lines = [
        f"{m['task']} {m['arch']} {m['input'][0]}x{m['input'][1]} on {rep['images']} images "
        f"({rep['images_per_second']:.1f} img/s); thresholds {rep['thresholds']} tuned on {rep['thresholds_tuned_on']}"
    ]
    for subset, r in rep["image"].items():
        lines.append(
            f"  image {subset:5s}: TPR {r['tpr']:.3f} TNR {r['tnr']:.3f} ACC {r['acc']:.3f} AP {r['ap']:.3f} "
            f"AUROC {r['auroc']:.3f} ({r['defective']} defective, {r['good']} good)"
        )
    for subset, r in rep.get("pixel", {}).items():
        lines.append(
            f"  pixel {subset:5s}: precision {r['precision']:.3f} recall {r['recall']:.3f} F1 {r['f1']:.3f} "
            f"IoU {r['iou']:.3f} ({r['images']} images, {r['defect_pixels']} defect px)"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from inspector.train.cli import Formatter

    p = subparsers.add_parser(
        "evaluate",
        help="metrics of a checkpoint or ONNX model on a test set, thresholds chosen on validation data",
        description=__doc__,
        formatter_class=Formatter,
    )
    p.add_argument("--model", required=True, type=Path, help="checkpoint (.pt) or exported model (.onnx)")
    p.add_argument("--data", required=True, type=Path, help="test data set (Magnetic Tile or generic layout)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-data", type=Path, help="validation data set: the operating point is chosen on it")
    val.add_argument(
        "--val-split",
        type=Path,
        metavar="SPLIT_JSON",
        help="the split.json `inspector-train train` wrote into its --out folder: the operating point is chosen on "
        "exactly the images that training held out",
    )
    p.add_argument("--block-threshold", type=float, help="fixed (skips tuning for the recognizer/classifier)")
    p.add_argument("--pixel-threshold", type=float, help="fixed (skips tuning for segmenters, with --min-area-px)")
    p.add_argument("--min-area-px", type=int, help="fixed smallest rejecting blob (frame pixels)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the full report (with per-image scores) as JSON here")
    p.add_argument("--yaml", type=Path, help="write the suggested `decision:` block here")
    p.set_defaults(func=run_evaluate)


def samples_from_split(path: Path, side: str = "val") -> list[Sample]:
    """The images one side of a split.json names, re-read (class, mask, area) from their data set."""
    from inspector.train.datasets import load_dataset

    doc = json.loads(path.read_text())
    wanted = {str(Path(p).resolve()) for p in doc[side]}
    if not wanted:
        raise SystemExit(f"{path}: no {side} images")
    roots = {Path(p).resolve().parent for p in doc[side]}
    # The data set root is the nearest folder above the images that the loader accepts.
    samples: list[Sample] = []
    for candidate in sorted({r.parent for r in roots} | {r.parent.parent for r in roots}):
        try:
            found, _ = load_dataset(candidate)
        except (FileNotFoundError, ValueError):
            continue
        samples = [s for s in found if str(s.image.resolve()) in wanted]
        if len(samples) == len(wanted):
            return samples
    raise SystemExit(f"{path}: could not find all {len(wanted)} {side} images in a data set folder")


def run_evaluate(args: argparse.Namespace) -> int:
    from inspector.train.datasets import load_dataset

    model = open_model(args.model, args.threads)
    info = model.info
    test, _ = load_dataset(args.data)
    fixed = {
        k: v
        for k, v in (
            ("block_threshold", args.block_threshold),
            ("pixel_threshold", args.pixel_threshold),
            ("min_area_px", args.min_area_px),
        )
        if v is not None
    }
    needed = ("pixel_threshold", "min_area_px") if info.pixel_task else ("block_threshold",)
    if all(k in fixed for k in needed):
        thresholds, tuned_on = {k: fixed[k] for k in needed}, "the command line (fixed, not tuned)"
    elif args.val_data or args.val_split:
        if args.val_data:
            val, _ = load_dataset(args.val_data)
            tuned_on = f"validation set {args.val_data} ({len(val)} images)"
        else:
            val = samples_from_split(args.val_split)
            tuned_on = f"the validation images of {args.val_split} ({len(val)} images)"
        overlap = {s.image.resolve() for s in val} & {s.image.resolve() for s in test}
        if overlap:
            raise SystemExit(
                f"{len(overlap)} test images are also validation images: the operating point would "
                "be chosen on the test set"
            )
        n_def = sum(s.defective for s in val)
        if n_def < 20:
            print(
                f"warning: the operating point comes from {n_def} defective validation images: expect it to move "
                "on new data (more validation data, or cross-fitted thresholds from `inspector-train cv`)",
                file=sys.stderr,
            )
        thresholds = {**choose_thresholds(model, val, args.batch), **{k: v for k, v in fixed.items() if k in needed}}
    else:
        raise SystemExit(
            "no operating point: give --val-data or --val-split (the threshold is chosen on validation images), "
            f"or fixed {' and '.join('--' + k.replace('_', '-') for k in needed)}. Thresholds are never guessed "
            "(0.5 is not an operating point) and never chosen on the test set"
        )
    thresholds = exported_thresholds(thresholds)  # what the line will use, so the report is the line's
    rep = report(model, test, thresholds, tuned_on=tuned_on, batch=args.batch)
    rep["data"] = str(args.data)
    print(format_summary(rep))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(jsonable(rep), indent=1) + "\n")
    block = decision_yaml(
        thresholds, f"Suggested by inspector-train evaluate for {args.model}\noperating point from {tuned_on}"
    )
    print(block, end="")
    if args.yaml:
        args.yaml.parent.mkdir(parents=True, exist_ok=True)
        args.yaml.write_text(block)
    return 0
