"""Training: the paper's recipe for the recognizer and the segmenter, and the same loop for the baselines.

Loss and optimiser. Logistic (softmax) cross-entropy plus an L2 penalty, minimised with Adam. The L2 term is
Adam's own `weight_decay`, which adds ``weight_decay * w`` to the gradient — exactly the gradient of
``weight_decay / 2 * ||w||^2`` added to the loss, i.e. the paper's "cross-entropy + L2". (AdamW's decoupled
decay is a different regulariser, so it is not used.) It applies to convolution and linear weights only: an
L2 pull on batch-norm scales and biases shrinks nothing that overfits and only fights the normalisation.

Sampling (all four tasks, so every model sees the same images per epoch). An epoch is one pass over the
defective training images with pixel labels; item i pairs defective image i with a genuine (defect-free) image
drawn at random for (seed, epoch, i).
- recognizer: the loss counts the k defective 32x32 blocks of the defective image (labels.py's rule, full
  resolution, after augmentation) and k blocks drawn at random from the genuine image: defective and normal
  blocks in the ratio 1:1. `blocks_per_image` > 0 caps k (k defective blocks drawn at random).
- classifier (baseline): the two images with their image labels — also 1:1.
- segmenter: the whole image (resized) into the backbone, a random local crop into the branch, loss on the
  crop's pixels only. With probability `crop_defect_bias` a defective image's crop is centred on one of its
  defect pixels: a uniformly placed crop of a few-pixel defect would nearly always be pure background.
- deeplabv3plus (baseline): the whole image, loss on every pixel.

Input. Every image is resized whole to the network input by `inspector.preprocess.resize_image` (the function
the daemon uses); augmentation runs before that, at full resolution. docs/TRAINING.md records the measurement
behind resizing rather than tiling.

Reproducibility. Seeds for python, numpy and torch; an item's augmentation, partner image, block choice and
crop depend only on (seed, epoch, index) and the epoch's order only on (seed, epoch), so a run resumed from
its last checkpoint continues exactly as if it had never stopped (a test checks weights bit for bit on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from inspector.preprocess import resize_image, resize_mask
from inspector.train import distributed as D
from inspector.train.augment import AugmentConfig, apply_augment, build_augment
from inspector.train.datasets import Sample, image_pixel_format, load_sample, read_image, summarize
from inspector.train.labels import BLOCK, block_labels, grid_for
from inspector.train.models import TASKS, Deployed, build_model, mean_std, normalize_batch

CHECKPOINT_FORMAT = "inspector-train-checkpoint"
CHECKPOINT_VERSION = 1
SEGMENTATION_TASKS = ("segmenter", "deeplabv3plus")


@dataclass
class TrainConfig:
    task: str = "recognizer"  # recognizer | segmenter | classifier | deeplabv3plus
    arch: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet-tiny
    size: tuple[int, int] = (224, 224)  # network input (height, width), multiples of 32
    color: str = "auto"  # gray | rgb | auto (rgb if the first training image has 3 channels)
    epochs: int = 30
    steps_per_epoch: int = 0  # 0: a full pass over the defective training images; > 0: stop the epoch early
    batch: int = 8  # pairs per step and per process (2 * batch images)
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # cosine (per step, to 0) | constant
    weight_decay: float = 1e-4  # the L2 coefficient (Adam weight_decay, conv/linear weights only)
    seed: int = 0
    workers: int = 2  # DataLoader worker processes
    threads: int = 2  # torch CPU threads per process
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    block_min_pixels: int = 1  # labels.py: defect pixels that make a block defective
    blocks_per_image: int = 0  # recognizer: cap on defective blocks per pair (0 = all)
    normal_from_defective: float = 0.0  # recognizer: share of normal blocks drawn from the defective image
    crop: int = 128  # segmenter: branch crop side (multiple of 32, at most the input size)
    crop_defect_bias: float = 0.5  # segmenter: P(crop of a defective image centred on a defect pixel)
    output_stride: int = 16  # segmentation with resnet50: deep-feature stride (8 or 16; others stay at 32)
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # CUDA only: bfloat16 autocast
    resume: bool = False  # continue from out_dir/last.pt
    plots: bool = True  # loss curves and sample predictions as PNG
    keep_every: int = 0  # also keep epoch_NNN.pt every N epochs (0: only last.pt and best.pt)
    val_batch: int = 8

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        self.size = (int(self.size[0]), int(self.size[1]))
        grid_for(self.size)  # raises unless multiples of 32
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if self.task == "segmenter" and (self.crop % 32 or self.crop > min(self.size)):
            raise ValueError(f"crop {self.crop} must be a multiple of 32 and fit in {self.size}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ------------------------------------------------------------------------------------------------- data


def item_seed(seed: int, epoch: int, index: int, salt: int = 0) -> int:
    return int(np.random.SeedSequence([seed, epoch, index, salt]).generate_state(1)[0])


@dataclass
class Prepared:
    image: np.ndarray  # (h, w, c) uint8 network input
    seg: np.ndarray  # (h, w) uint8 label at network resolution (nearest), for the segmenters
    blocks: np.ndarray  # (gh, gw) uint8 block labels from the full-resolution label
    defective: bool


def prepare(
    sample: Sample,
    classes: list[str],
    size: tuple[int, int],
    color: str,
    transform: Any,
    seed: int,
    min_pixels: int,
) -> Prepared:
    """Load, augment at full resolution (seeded), resize with the shared preprocessing, label."""
    image, label = load_sample(sample, classes)
    if transform is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image, label = apply_augment(transform, image, label)
    x = resize_image(image, size, pixel_format=image_pixel_format(image), color=color)
    return Prepared(x, resize_mask(label, size), block_labels(label, grid_for(size), min_pixels), sample.defective)


class PairDataset(Dataset):
    """Item i: defective image i and a genuine partner, with the blocks and crops the loss counts."""

    def __init__(self, defective: list[Sample], good: list[Sample], classes: list[str], cfg: TrainConfig, color: str):
        if not defective or not good:
            raise ValueError(
                f"training needs defective and defect-free images (got {len(defective)} and {len(good)}): "
                "the recipe pairs each defective image with a genuine one"
            )
        self.defective, self.good, self.classes, self.cfg, self.color = defective, good, classes, cfg, color
        self.transform = build_augment(cfg.augment)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.defective)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        cfg = self.cfg
        rng = np.random.default_rng(item_seed(cfg.seed, self.epoch, index))
        partner_index = int(rng.integers(len(self.good)))
        partner = self.good[partner_index]
        items = [
            prepare(
                s, self.classes, cfg.size, self.color, self.transform, int(rng.integers(2**31)), cfg.block_min_pixels
            )
            for s in (self.defective[index], partner)
        ]
        out: dict[str, np.ndarray] = {
            "image": np.stack([p.image for p in items]),
            "seg": np.stack([p.seg for p in items]),
            "blocks": np.stack([p.blocks for p in items]),
            "defective": np.array([True, False]),
            "source": np.array([index, partner_index]),  # indices into the defective and the good list
        }
        out["select"] = balanced_selection(
            items[0].blocks, items[1].blocks, rng, cfg.blocks_per_image, cfg.normal_from_defective
        )
        if cfg.task == "segmenter":
            out["crop_box"] = np.stack([choose_crop(p.seg, cfg.crop, rng, cfg.crop_defect_bias) for p in items])
        return out


def balanced_selection(
    defective_blocks: np.ndarray,
    good_blocks: np.ndarray,
    rng: np.random.Generator,
    cap: int = 0,
    normal_from_defective: float = 0.0,
) -> np.ndarray:
    """(2, gh, gw) bool: the k defective blocks of the defective image, and k normal blocks — by default all
    from the genuine image (the paper); `normal_from_defective` of them from the defective image's own normal
    blocks instead, so "defect-free" is also learnt on the images that carry defects (otherwise a network can
    lean on whatever tells the two image populations apart, e.g. their folders' lighting)."""
    if good_blocks.any():
        raise ValueError("a genuine image with defective blocks")
    select = np.zeros((2, *defective_blocks.shape), bool)
    positives = np.flatnonzero(defective_blocks)
    if cap > 0 and len(positives) > cap:
        positives = rng.choice(positives, cap, replace=False)
    k = min(len(positives), good_blocks.size)
    select[0].flat[positives[:k]] = True
    own_normal = np.flatnonzero(defective_blocks == 0)
    k_own = min(round(normal_from_defective * k), len(own_normal))
    if k_own:
        select[0].flat[rng.choice(own_normal, k_own, replace=False)] = True
    # The genuine image's blocks are all normal (its mask is empty), so any of them are normal blocks.
    select[1].flat[rng.choice(good_blocks.size, k - k_own, replace=False)] = True
    return select


def choose_crop(seg: np.ndarray, crop: int, rng: np.random.Generator, defect_bias: float) -> np.ndarray:
    """(top, left, crop, crop), top/left multiples of 4 (the segmenter's alignment unit)."""
    height, width = seg.shape
    ys, xs = np.nonzero(seg)
    if len(ys) and rng.random() < defect_bias:
        i = int(rng.integers(len(ys)))
        top = round((ys[i] - crop / 2) / 4) * 4
        left = round((xs[i] - crop / 2) / 4) * 4
    else:
        top = int(rng.integers((height - crop) // 4 + 1)) * 4
        left = int(rng.integers((width - crop) // 4 + 1)) * 4
    top = min(max(top, 0), (height - crop) // 4 * 4)
    left = min(max(left, 0), (width - crop) // 4 * 4)
    return np.array([top, left, crop, crop], np.int64)


def collate_pairs(items: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Pairs -> one batch: defective images first, then their partners in the same order."""
    out = {}
    for key in items[0]:
        stacked = np.stack([it[key] for it in items])  # (B, 2, ...)
        out[key] = torch.from_numpy(np.concatenate([stacked[:, 0], stacked[:, 1]]))
    return out


class EvalDataset(Dataset):
    """Plain images, no augmentation: validation and prediction plots."""

    def __init__(self, samples: list[Sample], classes: list[str], cfg: TrainConfig, color: str):
        self.samples, self.classes, self.cfg, self.color = samples, classes, cfg, color

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        p = prepare(self.samples[index], self.classes, self.cfg.size, self.color, None, 0, self.cfg.block_min_pixels)
        return {"image": p.image, "seg": p.seg, "blocks": p.blocks, "defective": np.array(p.defective)}


def collate_plain(items: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}


# --------------------------------------------------------------------------------------------- training


def seed_worker(worker_id: int) -> None:
    """DataLoader worker: numpy and python from the worker's torch seed (which DataLoader derives per worker).

    Items draw their own randomness from (seed, epoch, index); this only covers library code that would
    reach for the global generators.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_color(cfg: TrainConfig, samples: list[Sample]) -> str:
    if cfg.color in ("gray", "rgb"):
        return cfg.color
    return "rgb" if read_image(samples[0].image).shape[2] == 3 else "gray"


def model_inputs(
    batch: dict[str, torch.Tensor], mean: tuple[float, ...], std: tuple[float, ...], device
) -> torch.Tensor:
    """uint8 NHWC -> normalised NCHW: the arithmetic of models.Normalize, i.e. of the exported graph."""
    return normalize_batch(batch["image"].to(device, non_blocking=True), mean, std)


def training_loss(model: nn.Module, task: str, x: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    device = x.device
    if task == "recognizer":
        logits = model(x)
        target = batch["blocks"].to(device).long()
        select = batch["select"].to(device)
        per_block = F.cross_entropy(logits, target, reduction="none")
        # Pairs without a defective block (rotated out of frame) select nothing; never divide by zero.
        return (per_block * select).sum() / select.sum().clamp(min=1)
    if task == "classifier":
        return F.cross_entropy(model(x), batch["defective"].to(device).long())
    target = batch["seg"].to(device).long()
    if task == "deeplabv3plus":
        return F.cross_entropy(model(x), target)
    boxes = batch["crop_box"]
    crops = torch.stack([x[i, :, t : t + h, x0 : x0 + w] for i, (t, x0, h, w) in enumerate(boxes.tolist())])
    target_crops = torch.stack([target[i, t : t + h, x0 : x0 + w] for i, (t, x0, h, w) in enumerate(boxes.tolist())])
    return F.cross_entropy(model(x, crops, boxes.tolist()), target_crops)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim > 1 and not name.endswith(".bias") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def validate(
    model: nn.Module,
    task: str,
    loader: DataLoader,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    keep: int = 0,
) -> tuple[dict[str, float], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Loss and the metric that picks the best checkpoint; `keep` (image, truth, prediction) for plots."""
    model.eval()
    losses, kept = [], []
    tp = fn = tn = fp = 0  # images (recognizer, classifier) or pixels (segmenters)
    # Segmenters: P(defect) histograms of defect and background pixels, for the best F1 over thresholds.
    hist_defect = torch.zeros(F1_BINS, dtype=torch.int64)
    hist_background = torch.zeros(F1_BINS, dtype=torch.int64)
    scores, truths = [], []  # image scores and labels (recognizer, classifier)
    for batch in loader:
        x = model_inputs(batch, mean, std, device)
        logits = model(x)
        if task in ("recognizer", "classifier"):
            truth = batch["defective"].to(device)
            if task == "recognizer":
                target = batch["blocks"].to(device).long()
                losses.append(F.cross_entropy(logits, target).item())
                prob = torch.softmax(logits, 1)[:, 1]
                pred = prob.flatten(1).amax(1) >= 0.5  # image verdict: any block over the threshold
            else:
                losses.append(F.cross_entropy(logits, truth.long()).item())
                prob = torch.softmax(logits, 1)[:, 1]
                pred = prob >= 0.5
            scores.append((prob.flatten(1).amax(1) if prob.ndim > 1 else prob).float().cpu())
            truths.append(truth.cpu())
            tp += int((pred & truth).sum())
            fn += int((~pred & truth).sum())
            tn += int((~pred & ~truth).sum())
            fp += int((pred & ~truth).sum())
            truth_maps = batch["blocks"] if task == "recognizer" else batch["defective"]
        else:
            target = batch["seg"].to(device).long()
            losses.append(F.cross_entropy(logits, target).item())
            prob = torch.softmax(logits, 1)
            pred, truth_px = prob.argmax(1) > 0, target > 0
            tp += int((pred & truth_px).sum())
            fn += int((~pred & truth_px).sum())
            tn += int((~pred & ~truth_px).sum())
            fp += int((pred & ~truth_px).sum())
            prob = 1 - prob[:, 0]  # P(any defect class) per pixel: what the daemon thresholds, and the plot
            bins = (prob.float() * (F1_BINS - 1)).round().long().clamp(0, F1_BINS - 1)
            hist_defect += torch.bincount(bins[truth_px].cpu(), minlength=F1_BINS)
            hist_background += torch.bincount(bins[~truth_px].cpu(), minlength=F1_BINS)
            truth_maps = batch["seg"]
        for i in range(min(keep - len(kept), x.shape[0])):
            kept.append((batch["image"][i].numpy(), truth_maps[i].numpy(), prob[i].float().cpu().numpy()))
    model.train()
    metrics = {"val_loss": float(np.mean(losses)) if losses else math.nan}
    if task in ("recognizer", "classifier"):
        tpr = tp / (tp + fn) if tp + fn else math.nan
        tnr = tn / (tn + fp) if tn + fp else math.nan
        metrics.update(val_tpr=tpr, val_tnr=tnr, val_acc=float(np.nanmean([tpr, tnr])))
        metrics["val_auroc"] = auroc(torch.cat(scores).numpy(), torch.cat(truths).numpy()) if scores else math.nan
    else:
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        iou = tp / (tp + fp + fn) if tp + fp + fn else 0.0
        metrics.update(val_precision=precision, val_recall=recall, val_f1=f1, val_iou=iou)
        best_f1, best_threshold = best_f1_over_thresholds(hist_defect.numpy(), hist_background.numpy())
        metrics.update(val_best_f1=best_f1, val_best_threshold=best_threshold)
    return metrics, kept


F1_BINS = 1001  # P(defect) quantised to 0.001 for the threshold sweep


def best_f1_over_thresholds(hist_defect: np.ndarray, hist_background: np.ndarray) -> tuple[float, float]:
    """(best pixel F1, its threshold) over thresholds t = i / (bins - 1), a pixel counting as defect when its
    quantised P(defect) >= t. From two histograms, so a validation pass keeps two small arrays instead of every
    pixel's score."""
    tp = np.cumsum(hist_defect[::-1])[::-1].astype(np.float64)  # defect pixels at or above each threshold
    fp = np.cumsum(hist_background[::-1])[::-1].astype(np.float64)
    fn = hist_defect.sum() - tp
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    i = int(np.argmax(f1))
    return float(f1[i]), i / (len(hist_defect) - 1)


def auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); nan without both classes."""
    pos, neg = scores[truth.astype(bool)], scores[~truth.astype(bool)]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def key_metric(task: str) -> str:
    """What picks the best checkpoint. Image models: AUROC of the image score (max block probability) —
    threshold-free, because the operating threshold is chosen afterwards (evaluation), and ACC at a fixed
    0.5 on the maximum of 49 blocks mostly measures how the threshold happens to sit early in training.
    Segmenters: the best pixel F1 of defect vs background over thresholds on P(defect) = 1 - P(background) —
    threshold-free for the same reason, and because from scratch the arg-max over background and several
    defect classes stays background long after the defects stand out (measured on the synthetic demo data:
    F1 at the arg-max 0 for five epochs while P(defect) on cracks was already ~0.5)."""
    return "val_best_f1" if task in SEGMENTATION_TASKS else "val_auroc"


def _is_better(metrics: dict[str, float], best: dict[str, float] | None, task: str) -> bool:
    if best is None:
        return True
    k = key_metric(task)
    a, b = metrics.get(k, math.nan), best.get(k, math.nan)
    if math.isnan(b) or (not math.isnan(a) and a > b):
        return True
    return a == b and metrics["val_loss"] < best["val_loss"]


def train(
    cfg: TrainConfig,
    train_samples: list[Sample],
    val_samples: list[Sample],
    classes: list[str],
    out_dir: str | Path,
) -> Path:
    """Train one model; returns the best checkpoint (by the validation metric; the last one without a
    validation set). Writes out_dir/{last,best}.pt, history.json, loss.png, predictions.png."""
    out_dir = Path(out_dir)
    ctx = D.setup(cfg.device)
    torch.set_num_threads(cfg.threads)
    started = time.monotonic()
    try:
        return _train(cfg, train_samples, val_samples, classes, out_dir, ctx, started)
    finally:
        D.teardown(ctx)


def _train(cfg, train_samples, val_samples, classes, out_dir: Path, ctx: D.DistContext, started: float) -> Path:
    seed_everything(cfg.seed)
    color = resolve_color(cfg, train_samples)
    in_channels = 1 if color == "gray" else 3
    mean, std = mean_std(in_channels)
    num_classes = 1 + len(classes)
    usable = [s for s in train_samples if s.has_pixel_labels]
    defective = [s for s in usable if s.defective]
    good = [s for s in usable if not s.defective]
    val = [s for s in val_samples if s.has_pixel_labels] if cfg.task in SEGMENTATION_TASKS else list(val_samples)
    log = _Log(out_dir, ctx.is_main)
    log(
        f"task {cfg.task}, arch {cfg.arch}, input {cfg.size[0]}x{cfg.size[1]} {color}, {ctx.world_size} process(es) "
        f"on {ctx.device}; train {summarize(train_samples)}; left out (defective without pixel labels): "
        f"{len(train_samples) - len(usable)}; validation images: {len(val)}"
    )

    model = build_model(cfg.task, cfg.arch, in_channels, num_classes, cfg.output_stride).to(ctx.device)
    optimizer = torch.optim.Adam(param_groups(model, cfg.weight_decay), lr=cfg.lr)

    dataset = PairDataset(defective, good, classes, cfg, color)
    per_rank = math.ceil(len(dataset) / ctx.world_size)
    steps = math.ceil(per_rank / cfg.batch)
    if cfg.steps_per_epoch > 0:
        steps = min(steps, cfg.steps_per_epoch)
    total_steps = steps * cfg.epochs
    if cfg.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
        )
    elif cfg.lr_schedule == "constant":
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    else:
        raise ValueError(f"lr_schedule must be cosine or constant, not {cfg.lr_schedule!r}")

    history: list[dict[str, Any]] = []
    step_losses: list[float] = []
    best: dict[str, float] | None = None
    start_epoch = 0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if cfg.resume and last_path.is_file():
        ckpt = torch.load(last_path, map_location=ctx.device, weights_only=False)
        for key in ("task", "arch", "in_channels", "classes"):
            if ckpt[key] != {"task": cfg.task, "arch": cfg.arch, "in_channels": in_channels, "classes": classes}[key]:
                raise ValueError(f"cannot resume {last_path}: its {key} is {ckpt[key]!r}")
        if tuple(ckpt["size"]) != cfg.size:
            raise ValueError(f"cannot resume {last_path}: input size {ckpt['size']} vs {list(cfg.size)}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        history, step_losses, best = ckpt["history"], ckpt["step_losses"], ckpt.get("best_metrics")
        start_epoch = ckpt["epoch"] + 1
        started -= ckpt.get("train_seconds", 0.0)
        log(f"resumed from {last_path} after epoch {ckpt['epoch']}")
    elif cfg.resume:
        log(f"--resume: no {last_path} yet, starting from scratch")
    ddp_model = D.wrap(model, ctx)

    val_loader = DataLoader(
        EvalDataset(val, classes, cfg, color),
        batch_size=cfg.val_batch,
        shuffle=False,
        collate_fn=collate_plain,
        num_workers=cfg.workers,
    )
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "task": cfg.task,
        "arch": cfg.arch,
        "size": list(cfg.size),
        "in_channels": in_channels,
        "color": color,
        "classes": classes,
        "num_classes": num_classes,
        "mean": list(mean),
        "std": list(std),
        "block_size": BLOCK if cfg.task == "recognizer" else None,
        "output_stride": cfg.output_stride,
        "cfg": cfg.to_dict(),
        "seed": cfg.seed,
        "world_size": ctx.world_size,
        "hardware": _hardware(ctx),
    }

    autocast = cfg.amp and ctx.device.type == "cuda"
    for epoch in range(start_epoch, cfg.epochs):
        dataset.epoch = epoch
        loader = DataLoader(
            dataset,
            batch_size=cfg.batch,
            sampler=D.make_sampler(dataset, ctx, cfg.seed, epoch, shuffle=True),
            collate_fn=collate_pairs,
            num_workers=cfg.workers,
            pin_memory=ctx.device.type == "cuda",
            # Worker seeds from (seed, epoch, rank), not from the global generator; numpy/random seeded too.
            generator=torch.Generator().manual_seed(item_seed(cfg.seed, epoch, ctx.rank, salt=1)),
            worker_init_fn=seed_worker,
        )
        ddp_model.train()
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not ctx.is_main, leave=False)
        epoch_losses = []
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            x = model_inputs(batch, mean, std, ctx.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                loss = training_loss(ddp_model, cfg.task, x, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            epoch_losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{schedule.get_last_lr()[0]:.2e}")
        bar.close()
        train_loss = D.mean_over_ranks(float(np.mean(epoch_losses)), ctx)
        divergence = D.replica_divergence(ddp_model, ctx)
        if ctx.is_main:
            metrics, kept = validate(model, cfg.task, val_loader, mean, std, ctx.device, keep=6) if val else ({}, [])
            record = {"epoch": epoch, "train_loss": train_loss, "replica_divergence": divergence, **metrics}
            record["seconds"] = time.monotonic() - started
            history.append(record)
            step_losses.extend(epoch_losses)
            improved = bool(val) and _is_better(metrics, best, cfg.task)
            if improved:
                best = {k: v for k, v in metrics.items()}
            ckpt = {
                **meta,
                "epoch": epoch,
                "metrics": metrics,
                "best_metrics": best,
                "history": history,
                "step_losses": step_losses,
                "train_seconds": record["seconds"],
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(),
            }
            _atomic_save(ckpt, last_path)
            if cfg.keep_every > 0 and (epoch + 1) % cfg.keep_every == 0:
                _atomic_save(ckpt, out_dir / f"epoch_{epoch + 1:03d}.pt")
            if improved or not val:
                _atomic_save({**ckpt, "optimizer": None, "scheduler": None}, best_path)
            (out_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
            log(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
            if cfg.plots:
                from inspector.train.plots import plot_losses, plot_predictions

                plot_losses(history, step_losses, out_dir / "loss.png", key_metric(cfg.task))
                if kept:
                    plot_predictions(kept, cfg.task, out_dir / "predictions.png", title=f"epoch {epoch + 1}")
        D.barrier(ctx)
    if not best_path.is_file() and last_path.is_file() and ctx.is_main:
        _atomic_save({**torch.load(last_path, weights_only=False), "optimizer": None, "scheduler": None}, best_path)
    return best_path


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    """A checkpoint is either the old or the new one, never half written (a killed job must stay resumable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _hardware(ctx: D.DistContext) -> str:
    if ctx.device.type == "cuda":
        return f"{ctx.world_size} x {torch.cuda.get_device_name(ctx.device)}"
    return f"{ctx.world_size} x CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class _Log:
    """Rank 0 prints and appends to out_dir/train.log; other ranks stay quiet."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.path = out_dir / "train.log"
        self.enabled = enabled
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        tqdm.write(line)
        with self.path.open("a") as f:
            f.write(line + "\n")


# ------------------------------------------------------------------------------------------ checkpoints


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained network from a checkpoint alone -> (model in eval mode, checkpoint dict)."""
    ckpt = torch.load(path, map_location=device, weights_only=False)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an inspector training checkpoint")
    model = build_model(ckpt["task"], ckpt["arch"], ckpt["in_channels"], ckpt["num_classes"], ckpt["output_stride"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def deployed_from_checkpoint(path: str | Path) -> tuple[Deployed, dict[str, Any]]:
    """The export wrapper (uint8 NHWC in, probabilities out) around a checkpoint's network."""
    model, ckpt = load_checkpoint(path)
    return Deployed(model, ckpt["task"], ckpt["mean"], ckpt["std"]).eval(), ckpt
