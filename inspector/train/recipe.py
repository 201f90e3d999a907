"""Training: the paper's recipe for the recognizer and the segmenter, with what from-scratch surface-defect
training needs on a CPU budget, and the same loop for the baselines.

Loss and optimiser. Cross-entropy plus an L2 penalty, minimised with Adam (the paper's). The L2 term is Adam's own
`weight_decay`, which adds ``weight_decay * w`` to the gradient — exactly the gradient of
``weight_decay / 2 * ||w||^2`` added to the loss. It applies to convolution and linear weights only: an L2 pull
on batch-norm scales and biases shrinks nothing that overfits and only fights the normalisation. The learning
rate warms up linearly over the first `warmup_steps` (from scratch, Adam's first steps on a randomly
initialised ResNet are its least reliable) and then follows a cosine to 0.

Input (data.py). Each image is decoded once and kept at the training `scale` (1.0 = native resolution); the
network input of a model is fixed (`size`, by default the smallest multiple of 32 that holds every image at
that scale), with the frame at its top-left and zeros elsewhere — as in evaluation and in the daemon. The
classifier baseline is the paper's: the whole image squashed to `size` (224x224), `scale` None.

Sampling. Every step draws `batch` images, `defective_fraction` of them defective (balanced defective/normal,
the paper's recipe): each list is visited in a fresh random order per pass, so every defect-free image is seen
as often as any other (SegDecNet's "frequency of use" sampling, instead of drawing partners at random). An
epoch is as many steps as it takes to draw as many images as the training set holds.

- recognizer: a `crop` x `crop` window of each image (at the training scale), centred near a defect pixel
  with probability `defect_bias` on defective images; loss over every 32x32 block of the crop: the mean
  cross-entropy of the defective blocks and the mean of the normal ones, weighted equally (balanced blocks;
  with `hard_negatives` > 0 the normal-block mean is over the hardest `hard_negatives` x #defective ones
  only), plus `aux_weight` x the balanced binary cross-entropy of the dense head against the pixel mask at
  stride 8, dilated by `aux_dilate` px (mixed supervision; `aux_weight` 0 trains block labels only). In both,
  the defective mean is taken per window first (`positive_weight` image, the default): a one-block blowhole
  weighs as much as an uneven patch over twenty blocks (positive_mean; measured in docs/RESULTS.md).
- classifier (baseline): the whole squashed image, its image label.
- segmenter: the whole image (at scale) into the backbone, a `crop` x `crop` window into the branch (defect-
  centred with probability `defect_bias`), loss on the crop's pixels; with `window_loss` > 0 also that weight
  x the loss of decoder step 1's logits over every pixel of the window (models.Segmenter.forward_train).
- deeplabv3plus (baseline): the whole image, loss on every pixel.

Reproducibility. Seeds for python, numpy and torch; an item's image choice, crop and augmentation depend only
on (seed, epoch, step, slot) and the visiting order only on (seed, pass), so a run resumed from its last
checkpoint continues exactly as if it had never stopped (a test checks weights bit for bit on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from inspector.train import distributed as D
from inspector.train.augment import AugmentConfig, crop_transform, photometric, valid_map, warp
from inspector.train.data import (
    BLOCK,
    CachedImage,
    ImageCache,
    block_targets,
    cell_any,
    defect_patch,
    dense_targets,
    input_size_for,
    paste_defect,
    placed_input,
    round_up,
    training_crop,
)
from inspector.train.datasets import Sample, read_image, summarize
from inspector.train.models import (
    ARCHS,
    DECODER_WIDTH,
    LEGACY_DECODER_WIDTH,
    TASKS,
    Deployed,
    build_model,
    mean_std,
    normalize_batch,
)

CHECKPOINT_FORMAT = "inspector-train-checkpoint"
CHECKPOINT_VERSION = 2
SEGMENTATION_TASKS = ("segmenter", "deeplabv3plus")
DEFAULT_CROP = {"recognizer": 320, "segmenter": 128}
ASPECT_NOTE = 1.5  # squashing that stretches an image's aspect ratio more than this is logged
MIN_VAL_DEFECTIVE = 20  # fewer defective validation images than this: checkpoint and threshold are a guess


@dataclass
class TrainConfig:
    task: str = "recognizer"  # recognizer | segmenter | classifier | deeplabv3plus
    arch: str = "resnet-small"  # resnet-tiny | resnet-small | resnet18 | resnet34 | resnet50
    scale: float | None = 1.0  # network px per image px; None: squash the whole image to `size` (classifier)
    size: tuple[int, int] | None = None  # network input (h, w), multiples of 32; None: from the data (224 squashed)
    color: str = "auto"  # gray | rgb | auto (rgb if the first training image has 3 channels)
    epochs: int = 30
    steps_per_epoch: int = 0  # 0: as many images as the training set holds, per epoch
    batch: int = 16  # images per step and per process
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # cosine (per step, to 0) | constant
    warmup_steps: int = 100
    weight_decay: float = 1e-4  # the L2 coefficient (Adam weight_decay, conv/linear weights only)
    seed: int = 0
    threads: int = 2  # torch CPU threads per process
    cache_images: bool = True  # decode every image once and keep it in memory (False: decode per use)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    defective_fraction: float = 0.5  # share of each batch drawn from defective images
    crop: int = -1  # recognizer: N = NxN windows (0 = whole images); segmenter: branch crop (-1: 320 / 128); /32
    window: int = 256  # segmenter/deeplabv3plus: NxN training windows (0 = whole images); multiple of 32
    defect_bias: float = -1.0  # P(a defective image's window/crop holds one of its defect pixels) (-1: 0 / 0.7)
    block_min_pixels: int = 1  # defect pixels that make a block defective
    aux_weight: float = 1.0  # recognizer: weight of the dense (mixed supervision) loss; 0 = block labels only
    window_loss: float = 0.0  # segmenter: weight of a whole-window loss on decoder step 1's logits; 0 = off
    aux_dilate: int = 2  # recognizer: dilation of the mask (px at training scale) for the dense targets
    hard_negatives: float = 0.0  # recognizer: > 0 = normal-block loss over the hardest k x #defective blocks
    ignore_ring: int = 1  # recognizer: normal blocks within this many blocks of a defective one are not scored
    image_weight: float = 0.5  # recognizer: weight of the image-level loss on the highest block of each window
    positive_weight: str = "image"  # recognizer: image (each defective window weighs the same: positive_mean) | cell
    standardize: bool = True  # per-image input standardisation inside the network (models.ImageStandardize)
    pad: str = "reflect"  # what surrounds a placed frame in the input: zero | reflect (preprocess.place_image)
    ema: float = 0.0  # > 0: keep an exponential moving average of the weights (decay per step), validated/exported
    paste: float = 0.0  # recognizer: P(a defect-free window gets a real defect pasted in from a defective image)
    output_stride: int = 16  # segmentation with resnet50: deep-feature stride (8 or 16; others stay at 32)
    decoder_width: int = 0  # segmenter/deeplabv3plus: decoder channels (0: models.DECODER_WIDTH of the arch)
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # bfloat16 autocast: CUDA, and CPUs with native bfloat16 (AVX512-BF16/AMX; else ignored)
    # Train in the NHWC layout. Why: in the NCHW layout PyTorch's CPU max-pool, ReLU-backward and batch-norm
    # kernels run 1.3-5x slower on some inputs than on others (on per-image standardised images among them);
    # the NHWC kernels are vectorised over channels and are not, and oneDNN's convolutions prefer NHWC.
    # Layout only: the arithmetic and the saved weights are the same (docs/BENCHMARKS.md).
    channels_last: bool = True
    resume: bool = False  # continue from out_dir/last.pt
    plots: bool = True  # loss curves and sample predictions as PNG
    keep_every: int = 0  # also keep epoch_NNN.pt every N epochs (0: only last.pt and best.pt)
    val_batch: int = 8
    val_every: int = 1  # validate every N epochs (and always after the last)
    select: str = "best"  # best: the checkpoint with the best validation metric; last: the final epoch
    max_minutes: float = 0.0  # > 0: stop after the epoch that passes this much training time

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        if self.size is not None:
            self.size = (int(self.size[0]), int(self.size[1]))
            if self.size[0] % BLOCK or self.size[1] % BLOCK or min(self.size) <= 0:
                raise ValueError(f"size {self.size} must be positive multiples of {BLOCK}")
        if self.scale is not None and not 0.05 <= self.scale <= 4:
            raise ValueError(f"scale {self.scale} must lie in [0.05, 4] (network px per image px)")
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if self.crop < 0:
            self.crop = DEFAULT_CROP.get(self.task, 0)
        if self.task == "segmenter" and self.crop == 0:
            raise ValueError("the segmenter's branch crop must be > 0 (-1: the default, 128)")
        if self.defect_bias < 0:
            # Recognizer windows lie uniformly in the image (data.crop_center says why); the segmentation tasks'
            # windows and the segmenter's branch crop must see their few-pixel defects.
            self.defect_bias = 0.7 if self.task in ("segmenter", "deeplabv3plus") else 0.0
        if self.crop % BLOCK or self.window % BLOCK or self.window < 0:
            raise ValueError(f"crop {self.crop} and window {self.window} must be multiples of {BLOCK}")
        if not 0 < self.defective_fraction < 1:
            raise ValueError("defective_fraction must lie strictly between 0 and 1")
        if self.select not in ("best", "last"):
            raise ValueError("select must be best or last")
        if self.pad not in ("zero", "reflect"):
            raise ValueError(f"pad must be zero or reflect, not {self.pad!r}")
        if self.positive_weight not in ("cell", "image"):
            raise ValueError(f"positive_weight must be cell or image, not {self.positive_weight!r}")
        if not 0 <= self.ema < 1:
            raise ValueError("ema must lie in [0, 1)")
        if self.batch < 2:
            raise ValueError("batch must hold at least one defective and one normal image (>= 2)")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {self.arch!r}")
        if self.decoder_width < 0:
            raise ValueError("decoder_width must be >= 0 (0: the architecture's default)")
        if self.decoder_width == 0 and self.task in SEGMENTATION_TASKS:
            self.decoder_width = DECODER_WIDTH[self.arch]

    @property
    def squash(self) -> bool:
        return self.scale is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def default_scale(task: str) -> float | None:
    """The classifier baseline squashes (the paper's classifier); every other task keeps native resolution."""
    return None if task == "classifier" else 1.0


# ------------------------------------------------------------------------------------------------- data


def item_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


class Visitor:
    """Endless visiting order over n items: a fresh permutation per pass, seeded by (seed, salt, pass).

    Position p of the endless order is a pure function of p, so a resumed run continues where it stopped."""

    def __init__(self, n: int, seed: int, salt: int):
        self.n, self.seed, self.salt = n, seed, salt
        self._pass, self._order = -1, np.arange(0)

    def at(self, position: int) -> int:
        p, i = divmod(position, self.n)
        if p != self._pass:
            self._pass, self._order = p, np.random.default_rng(item_seed(self.seed, self.salt, p)).permutation(self.n)
        return int(self._order[i])


@dataclass
class Batch:
    image: np.ndarray  # (B, h, w, C) uint8
    defective: np.ndarray  # (B,) bool
    blocks: np.ndarray | None = None  # recognizer: (B, h/32, w/32) uint8
    dense: np.ndarray | None = None  # recognizer: (B, h/8, w/8) float32
    seg: np.ndarray | None = None  # segmenters: (B, h, w) uint8
    crop_box: np.ndarray | None = None  # segmenter: (B, 4) top, left, h, w
    valid: np.ndarray | None = None  # recognizer: (B, h/32, w/32) bool, blocks that hold image pixels
    dense_valid: np.ndarray | None = None  # recognizer: (B, h/8, w/8) bool, cells that hold image pixels


class BatchMaker:
    """Builds step `s` of epoch `e` from the cache: a pure function of (seed, e, s) and the cache."""

    def __init__(self, cache: ImageCache, cfg: TrainConfig, rank: int = 0, world: int = 1):
        self.cache, self.cfg, self.rank, self.world = cache, cfg, rank, world
        self.defective = [i for i, d in enumerate(cache.defective_flags) if d]
        self.good = [i for i, d in enumerate(cache.defective_flags) if not d]
        if not self.defective or not self.good:
            raise ValueError(
                f"training needs defective and defect-free images (got {len(self.defective)} and {len(self.good)}):"
                " each batch balances the two"
            )
        self.n_defective = max(1, min(cfg.batch - 1, round(cfg.batch * cfg.defective_fraction)))
        self.visit_defective = Visitor(len(self.defective), cfg.seed, 1)
        self.visit_good = Visitor(len(self.good), cfg.seed, 2)

    def steps_per_epoch(self) -> int:
        if self.cfg.steps_per_epoch > 0:
            return self.cfg.steps_per_epoch
        return max(1, math.ceil(len(self.cache) / (self.cfg.batch * self.world)))

    def _canvas(self, items: list[CachedImage]) -> tuple[int, int]:
        """The batch's own input: the largest image of the batch, rounded up to blocks (the network is fully
        convolutional, so padding to the model's input would only add zero border on varied image sizes)."""
        height = max(round_up(it.image.shape[0]) for it in items)
        width = max(round_up(it.image.shape[1]) for it in items)
        return min(height, self.cache.input_size[0]), min(width, self.cache.input_size[1])

    def make(self, epoch: int, step: int) -> Batch:
        cfg = self.cfg
        global_step = epoch * self.steps_per_epoch() + step
        n_def = self.n_defective
        n_good = cfg.batch - n_def
        # Each rank takes its own slice of the global order, so ranks never train on the same draw.
        base_d = (global_step * self.world + self.rank) * n_def
        base_g = (global_step * self.world + self.rank) * n_good
        picks = [self.defective[self.visit_defective.at(base_d + k)] for k in range(n_def)]
        picks += [self.good[self.visit_good.at(base_g + k)] for k in range(n_good)]
        rngs = [np.random.default_rng(item_seed(cfg.seed, epoch, step, self.rank, k)) for k in range(len(picks))]
        items = [self.cache[i] for i in picks]
        defective = np.array([it.defective for it in items], bool)
        aug = cfg.augment if cfg.augment.enabled else None
        if cfg.task == "recognizer":
            if cfg.crop > 0:
                # Never larger than the model's input: the window is what the network sees of a frame at most.
                crop = (min(cfg.crop, self.cache.input_size[0]), min(cfg.crop, self.cache.input_size[1]))
                triples = [
                    training_crop(it, crop, rng, aug, cfg.defect_bias, cfg.pad)
                    for it, rng in zip(items, rngs, strict=True)
                ]
            else:
                canvas = self._canvas(items)
                triples = [whole_image(it, canvas, rng, aug, cfg.pad) for it, rng in zip(items, rngs, strict=True)]
            if cfg.paste > 0:
                for k, (im, lab, valid) in enumerate(triples):
                    if not items[k].defective and rngs[k].random() < cfg.paste:
                        donor = self.cache[self.defective[int(rngs[k].integers(len(self.defective)))]]
                        patch = defect_patch(donor, rngs[k])
                        if patch is not None:
                            paste_defect(im, lab, valid, patch, rngs[k])
            labels = [lab for _, lab, _ in triples]
            # Pixels outside the image (its border) are never scored in evaluation or in the daemon, so blocks
            # and cells without one image pixel are left out of the loss too (thousands of trivially normal
            # border blocks would dilute the mean over normal blocks; a mirrored defect is not a defect).
            return Batch(
                image=np.stack([im for im, _, _ in triples]),
                defective=defective,
                blocks=np.stack([block_targets(lab, BLOCK, cfg.block_min_pixels) for lab in labels]),
                dense=np.stack([dense_targets(lab, 8, cfg.aux_dilate) for lab in labels]),
                valid=np.stack([cell_any(v, BLOCK) for _, _, v in triples]),
                dense_valid=np.stack([cell_any(v, 8) for _, _, v in triples]),
            )
        if cfg.task == "classifier":
            size = self.cache.input_size
            images = [whole_image(it, size, rng, aug, cfg.pad)[0] for it, rng in zip(items, rngs, strict=True)]
            return Batch(image=np.stack(images), defective=defective)
        if cfg.window > 0:
            # Windows, like the recognizer's, but holding a defect pixel with probability defect_bias (a pixel
            # loss needs defect pixels to learn from; the window lies anywhere around it, never centred on it).
            height, width = min(cfg.window, self.cache.input_size[0]), min(cfg.window, self.cache.input_size[1])
            triples = [
                training_crop(it, (height, width), rng, aug, cfg.defect_bias, cfg.pad)
                for it, rng in zip(items, rngs, strict=True)
            ]
        else:
            height, width = self._canvas(items)
            triples = [whole_image(it, (height, width), rng, aug, cfg.pad) for it, rng in zip(items, rngs, strict=True)]
        seg = np.stack([lab for _, lab, _ in triples])
        batch = Batch(image=np.stack([im for im, _, _ in triples]), defective=defective, seg=seg)
        if cfg.task == "segmenter":
            c = min(cfg.crop, height, width) // 32 * 32
            batch.crop_box = np.stack(
                [choose_crop(s, c, rng, cfg.defect_bias) for s, rng in zip(seg, rngs, strict=True)]
            )
        return batch


def whole_image(
    item: CachedImage,
    size: tuple[int, int],
    rng: np.random.Generator | None,
    aug: AugmentConfig | None,
    pad: str = "zero",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole cached image, augmented about its centre, at the top-left of an (h, w) input bordered by
    `pad` -> (image, label, valid pixels)."""
    h, w = item.image.shape[:2]
    height, width = size
    m = crop_transform((h / 2, w / 2), size, rng, aug)
    # crop_transform centres the image in the output; move it back to the top-left corner.
    shift = np.array([[1, 0, w / 2 - width / 2], [0, 1, h / 2 - height / 2], [0, 0, 1]], np.float64)
    image, label = warp(item.image, item.label, shift @ m, size, pad)
    assert label is not None
    return photometric(image, rng, aug), label, valid_map((h, w), shift @ m, size)


def choose_crop(seg: np.ndarray, crop: int, rng: np.random.Generator, defect_bias: float) -> np.ndarray:
    """(top, left, crop, crop), top/left multiples of 4 (the segmenter's alignment unit). With probability
    `defect_bias` the crop holds one of the defect pixels, anywhere in it (not centred: see data.crop_center)."""
    height, width = seg.shape
    ys, xs = np.nonzero(seg)
    max_top, max_left = (height - crop) // 4 * 4, (width - crop) // 4 * 4
    if len(ys) and rng.random() < defect_bias:
        i = int(rng.integers(len(ys)))
        # The lower bound is clamped too: max_top is rounded down to the alignment unit, so a defect pixel in
        # the last rows of an image whose free height is not a multiple of 4 would leave an empty range.
        top = int(rng.integers(min(max(ys[i] - crop + 1, 0), max_top), min(ys[i], max_top) + 1)) // 4 * 4
        left = int(rng.integers(min(max(xs[i] - crop + 1, 0), max_left), min(xs[i], max_left) + 1)) // 4 * 4
    else:
        top = int(rng.integers(max_top // 4 + 1)) * 4
        left = int(rng.integers(max_left // 4 + 1)) * 4
    return np.array([min(max(top, 0), max_top), min(max(left, 0), max_left), crop, crop], np.int64)


class Prefetcher:
    """Builds the next batch in a background thread while the current one trains.

    OpenCV and numpy release the GIL, so on two cores the crop/warp work overlaps the network's step instead of
    adding to it; one batch ahead is enough (a batch takes milliseconds, a step tens to hundreds)."""

    def __init__(self, maker: BatchMaker, plan: list[tuple[int, int]]):
        self.maker, self.plan = maker, plan
        self._next: Batch | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._i = 0
        self._start(0)

    def _start(self, i: int) -> None:
        if i >= len(self.plan):
            self._thread = None
            return

        def work() -> None:
            try:
                self._next = self.maker.make(*self.plan[i])
            except BaseException as exc:  # re-raised in the training thread
                self._error = exc

        self._thread = threading.Thread(target=work, name="batches", daemon=True)
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._thread is None:
            raise StopIteration
        self._thread.join()
        if self._error is not None:
            raise self._error
        batch, self._next = self._next, None
        self._i += 1
        self._start(self._i)
        assert batch is not None
        return batch


# --------------------------------------------------------------------------------------------- training


def amp_supported(device: torch.device) -> bool:
    """bfloat16 autocast pays on CUDA and on CPUs with native bfloat16 (AVX512-BF16, AMX): oneDNN's check.
    Elsewhere it is emulated and slower than float32."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_color(cfg: TrainConfig, samples: list[Sample]) -> str:
    if cfg.color in ("gray", "rgb"):
        return cfg.color
    return "rgb" if read_image(samples[0].image).shape[2] == 3 else "gray"


def balanced_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    hard_negatives: float = 0.0,
    valid: torch.Tensor | None = None,
    per_image: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy of the defective cells and of the normal ones, weighted equally.

    logits (N, 2, ...) and target (N, ...) long; `valid` (N, ...) bool keeps only those cells. Without
    defective cells: the normal mean alone. With `hard_negatives` k > 0: the normal mean is over the hardest
    max(k x #defective, N) normal cells. With `per_image`, the defective mean is taken per image first and then
    over images (positive_mean)."""
    ce = F.cross_entropy(logits, target, reduction="none")
    pos = target > 0
    neg = ce[~pos if valid is None else valid & ~pos]
    n_pos = int(pos.sum())
    if hard_negatives > 0 and len(neg):
        k = min(len(neg), max(int(hard_negatives * n_pos), logits.shape[0]))
        neg = torch.topk(neg, k).values
    neg_mean = neg.mean() if len(neg) else ce.sum() * 0
    if n_pos == 0:
        return neg_mean
    return 0.5 * positive_mean(ce, pos, per_image) + 0.5 * neg_mean


def positive_mean(loss: torch.Tensor, pos: torch.Tensor, per_image: bool) -> torch.Tensor:
    """Mean of `loss` over the `pos` cells ((N, ...) each): over all of them pooled, or (`per_image`) per image
    first and then over the images that have any.

    Why per image: pooled, an image's weight in the defective term is its number of defective cells, so one
    large defect (an uneven patch over 20 blocks) outweighs twenty 1-block blowholes in the same batch, and the
    network learns least about the defects the line finds hardest. Per image, every defective window counts
    the same, as in the image verdict."""
    if not per_image:
        return loss[pos].mean()
    pos_f = pos.flatten(1).to(loss.dtype)
    counts = pos_f.sum(1)
    has = counts > 0
    return ((loss.flatten(1) * pos_f).sum(1)[has] / counts[has]).mean()


def ignore_near_defects(target: torch.Tensor, ring: int, valid: torch.Tensor | None) -> torch.Tensor:
    """Blocks to score: not the normal blocks within `ring` blocks (8-neighbourhood) of a defective one.

    A block next to a defect sees nearly the same pixels as the defective block (the receptive field spans
    several blocks, the label flips at a block border), so insisting it scores low teaches little but noise;
    the image verdict is the highest block anyway. Those blocks are neither positive nor negative."""
    pos = (target > 0).float()[:, None]
    near = F.max_pool2d(pos, 2 * ring + 1, stride=1, padding=ring)[:, 0] > 0
    keep = ~near | (target > 0)
    return keep if valid is None else keep & valid


def max_block_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Image-level cross-entropy on each window's highest block: the score evaluation and the daemon decide on.

    Per window, the block logit margin (defective - normal) of its highest valid block against "the window
    holds a defective block"; balanced over windows with and without one. On a defect-free window this pushes
    down the one block most likely to cause a false reject (hard-negative mining for free)."""
    margin = logits[:, 1] - logits[:, 0]
    if valid is not None:
        margin = margin.masked_fill(~valid, -1e4)
    top = margin.flatten(1).amax(1)
    label = (target > 0).flatten(1).any(1).float()
    return balanced_bce(top, label)


def balanced_bce(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, per_image: bool = False
) -> torch.Tensor:
    """Binary cross-entropy with logits, mean over positive cells and over negative cells, weighted equally.

    `valid` (same shape, bool) keeps only those cells; `per_image`: the positive mean per image first
    (positive_mean), the leading dimension being the image."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pos = target > 0.5
    if valid is not None:
        pos = pos & valid
        neg = valid & ~pos
    else:
        neg = ~pos
    if not pos.any() or not neg.any():
        return bce[pos | neg].mean()
    return 0.5 * positive_mean(bce, pos, per_image) + 0.5 * bce[neg].mean()


def training_loss(
    model: nn.Module, cfg: TrainConfig, x: torch.Tensor, batch: Batch, device: torch.device
) -> tuple[torch.Tensor, dict[str, float]]:
    """-> (loss, its parts for the log)."""
    task = cfg.task
    if task == "recognizer":
        net = D.unwrap(model)
        if cfg.aux_weight > 0:
            blocks, dense = model.forward_train(x) if net is model else _ddp_forward_train(model, x)
        else:
            blocks, dense = model(x), None
        assert batch.blocks is not None and batch.dense is not None
        valid = torch.from_numpy(batch.valid).to(device) if batch.valid is not None else None
        target = torch.from_numpy(batch.blocks).to(device).long()
        if cfg.ignore_ring > 0:
            valid = ignore_near_defects(target, cfg.ignore_ring, valid)
        per_image = cfg.positive_weight == "image"
        block_loss = balanced_ce(blocks, target, cfg.hard_negatives, valid, per_image)
        loss, parts = block_loss, {"block": block_loss.item()}
        if cfg.image_weight > 0:
            image_loss = max_block_loss(blocks, target, valid)
            loss = loss + cfg.image_weight * image_loss
            parts["image"] = image_loss.item()
        if dense is not None:
            dense_t = torch.from_numpy(batch.dense).to(device)
            keep = torch.from_numpy(batch.dense_valid).to(device) if batch.dense_valid is not None else None
            dense_loss = balanced_bce(dense[:, 0], dense_t, keep, per_image)
            loss = loss + cfg.aux_weight * dense_loss
            parts["dense"] = dense_loss.item()
        return loss, parts
    if task == "classifier":
        loss = F.cross_entropy(model(x), torch.from_numpy(batch.defective).to(device).long())
        return loss, {}
    assert batch.seg is not None
    target = torch.from_numpy(batch.seg).to(device).long()
    if task == "deeplabv3plus":
        return F.cross_entropy(model(x), target), {}
    assert batch.crop_box is not None
    boxes = batch.crop_box.tolist()
    crops = torch.stack([x[i, :, t : t + h, c : c + w] for i, (t, c, h, w) in enumerate(boxes)])
    target_crops = torch.stack([target[i, t : t + h, c : c + w] for i, (t, c, h, w) in enumerate(boxes)])
    if cfg.window_loss <= 0:
        return F.cross_entropy(model(x, crops, boxes), target_crops), {}
    net = D.unwrap(model)
    logits, window = net.forward_train(x, crops, boxes) if net is model else _ddp_forward_train(model, x, crops, boxes)
    crop_loss = F.cross_entropy(logits, target_crops)
    window_loss = F.cross_entropy(window, target)
    return crop_loss + cfg.window_loss * window_loss, {"crop": crop_loss.item(), "window": window_loss.item()}


def _ddp_forward_train(model: nn.Module, *inputs: Any):
    # DDP only hooks forward(); route forward_train through it so gradients are still all-reduced.
    net = D.unwrap(model)
    original = net.forward
    net.forward = net.forward_train  # type: ignore[method-assign]
    try:
        return model(*inputs)
    finally:
        net.forward = original  # type: ignore[method-assign]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim > 1 and not name.endswith(".bias") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be cosine or constant, not {schedule!r}")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(max(step - warmup, 0), max(total - warmup, 1)) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------- validation


@torch.no_grad()
def predict_inputs(model: nn.Module, x_uint8: np.ndarray, mean, std, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> probabilities exactly as the exported graph computes them (Deployed's arithmetic)."""
    x = normalize_batch(torch.from_numpy(x_uint8).to(device), mean, std)
    logits = model(x)
    return torch.softmax(logits, 1)


def image_scores(block_prob: np.ndarray, placed: list[tuple[int, int]]) -> np.ndarray:
    """(N, gh, gw) P(defective block), placed (h, w) per image -> (N,) highest score over the blocks that hold
    image pixels (the zero border's blocks are never scored: inspector.preprocess.valid_grid)."""
    out = np.empty(len(placed), np.float64)
    for i, (h, w) in enumerate(placed):
        out[i] = block_prob[i, : math.ceil(h / BLOCK), : math.ceil(w / BLOCK)].max()
    return out


@torch.no_grad()
def validate(
    model: nn.Module, cfg: TrainConfig, cache: ImageCache, mean, std, device: torch.device, keep: int = 0
) -> tuple[dict[str, float], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The selection metric on the validation images, each placed in the model's input as evaluation does."""
    from inspector.train import metrics as M

    model.eval()
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    scores, truths = [], []
    hist_defect = np.zeros(F1_BINS, np.int64)
    hist_background = np.zeros(F1_BINS, np.int64)
    size = cache.input_size
    buffer = np.zeros((cfg.val_batch, *size, 1 if cache.color == "gray" else 3), np.uint8)
    for start in range(0, len(cache), cfg.val_batch):
        items = [cache[i] for i in range(start, min(start + cfg.val_batch, len(cache)))]
        x = buffer[: len(items)]
        for i, it in enumerate(items):
            placed_input(it, size, out=x[i], pad=cfg.pad)
        prob = predict_inputs(model, x, mean, std, device).float().cpu().numpy()
        placed = [it.image.shape[:2] for it in items]
        if cfg.task in ("recognizer", "classifier"):
            p1 = prob[:, 1] if prob.ndim == 4 else prob[:, 1, None, None]
            scores.append(image_scores(p1, placed) if cfg.task == "recognizer" else p1.reshape(-1))
            truths += [it.defective for it in items]
            maps = [block_targets(_pad_label(it, size), BLOCK) for it in items] if cfg.task == "recognizer" else None
            for i in range(min(keep - len(kept), len(items))):
                truth = maps[i] if maps is not None else np.array(items[i].defective)
                kept.append((x[i].copy(), truth, p1[i] if cfg.task == "recognizer" else p1[i, 0, 0]))
        else:
            pd = 1.0 - prob[:, 0]
            for i, it in enumerate(items):
                h, w = it.image.shape[:2]
                p = pd[i, :h, :w]
                truth = it.label > 0
                bins = np.clip(np.rint(p * (F1_BINS - 1)).astype(np.int64), 0, F1_BINS - 1)
                hist_defect += np.bincount(bins[truth], minlength=F1_BINS)
                hist_background += np.bincount(bins[~truth], minlength=F1_BINS)
                if len(kept) < keep:
                    kept.append((x[i].copy(), _pad_label(it, size), pd[i]))
    model.train()
    if cfg.task in ("recognizer", "classifier"):
        s, t = np.concatenate(scores), np.array(truths, bool)
        return {"val_ap": M.average_precision(s, t), "val_auroc": M.auroc(s, t), "val_margin": M.separation(s, t)}, kept
    best_f1, best_threshold = best_f1_over_thresholds(hist_defect, hist_background)
    return {"val_best_f1": best_f1, "val_best_threshold": best_threshold}, kept


def _pad_label(item: CachedImage, size: tuple[int, int]) -> np.ndarray:
    out = np.zeros(size, np.uint8)
    h, w = item.label.shape
    out[:h, :w] = item.label
    return out


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


def key_metric(task: str) -> str:
    """What picks the best checkpoint. Image models: the average precision of the image score (max block
    probability) — threshold-free, because the operating threshold is chosen afterwards, and the metric the
    line cares about (how cleanly defective parts rank above good ones); ties go to AUROC, then to the margin
    between the lowest defective and the highest defect-free score (metrics.separation): with few defective
    validation images AP and AUROC reach 1.0 early and stay there, and the first epoch to reach it would win
    over later ones that separate the two kinds further. Segmenters: the best
    pixel F1 of defect vs background over thresholds on P(defect) = 1 - P(background) — threshold-free for the
    same reason, and because from scratch the arg-max over background and several defect classes stays
    background long after the defects stand out."""
    return "val_best_f1" if task in SEGMENTATION_TASKS else "val_ap"


def _is_better(metrics: dict[str, float], best: dict[str, float] | None, task: str) -> bool:
    if best is None:
        return True
    keys = [key_metric(task)] + (["val_auroc", "val_margin"] if task not in SEGMENTATION_TASKS else [])
    for k in keys:
        a, b = metrics.get(k, math.nan), best.get(k, math.nan)
        if math.isnan(b) and not math.isnan(a):
            return True
        if not math.isnan(a) and not math.isnan(b) and a != b:
            return a > b
    return False


# ---------------------------------------------------------------------------------------------- the loop


def model_input_size(cfg: TrainConfig, samples: list[Sample]) -> tuple[int, int]:
    """The network input: `size` if given; squashing: 224x224; else the smallest that holds every image."""
    if cfg.size is not None:
        return cfg.size
    if cfg.squash:
        return (224, 224)
    import cv2

    sizes = []
    for s in samples:
        h, w = _image_size(s.image, cv2)
        sizes.append((h, w))
    return input_size_for(sizes, cfg.scale or 1.0)


def _image_size(path: Path, cv2) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f"cannot read image {path}")
    return int(image.shape[0]), int(image.shape[1])


def build_cache(
    samples: list[Sample], classes: list[str], cfg: TrainConfig, size: tuple[int, int], color: str, progress: bool
) -> ImageCache:
    lazy = not cfg.cache_images
    return ImageCache(samples, classes, None if cfg.squash else cfg.scale, size, color, progress and not lazy, lazy)


def train(
    cfg: TrainConfig,
    train_samples: list[Sample],
    val_samples: list[Sample],
    classes: list[str],
    out_dir: str | Path,
) -> Path:
    """Train one model; returns the chosen checkpoint (by the validation metric, or the last epoch with
    select=last or without validation data). Writes out_dir/{last,best}.pt, history.json, train.log, plots."""
    out_dir = Path(out_dir)
    ctx = D.setup(cfg.device)
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, train_samples, val_samples, classes, out_dir, ctx)
    finally:
        D.teardown(ctx)


def _train(cfg: TrainConfig, train_samples, val_samples, classes, out_dir: Path, ctx: D.DistContext) -> Path:
    seed_everything(cfg.seed)
    color = resolve_color(cfg, train_samples)
    in_channels = 1 if color == "gray" else 3
    mean, std = mean_std(in_channels)
    num_classes = 1 + len(classes)
    usable = [s for s in train_samples if s.has_pixel_labels]
    val = [s for s in val_samples if s.has_pixel_labels] if cfg.task in SEGMENTATION_TASKS else list(val_samples)
    log = _Log(out_dir, ctx.is_main)
    size = model_input_size(cfg, usable + val)
    n_val_defective = sum(s.defective for s in val)
    how = "squashed to" if cfg.squash else f"at scale {cfg.scale}, placed in"
    log(
        f"task {cfg.task}, arch {cfg.arch}, images {how} {size[0]}x{size[1]} {color}, {ctx.world_size} process(es) "
        f"on {ctx.device}; train {summarize(train_samples)}; left out (defective without pixel labels): "
        f"{len(train_samples) - len(usable)}; validation images: {len(val)} ({n_val_defective} defective)"
    )
    if val and n_val_defective < MIN_VAL_DEFECTIVE:
        log(
            f"warning: only {n_val_defective} defective validation images (< {MIN_VAL_DEFECTIVE}): the best "
            "checkpoint and any threshold chosen on them are close to a guess. Consider --select last (the final "
            "epoch of the schedule) and thresholds cross-fitted over CV groups (docs/EVALUATION.md)"
        )

    t0 = time.monotonic()
    cache = build_cache(usable, classes, cfg, size, color, progress=ctx.is_main)
    val_cache = build_cache(val, classes, cfg, size, color, progress=False) if val else None
    log(
        f"decoded {len(usable) + len(val)} images once in {time.monotonic() - t0:.1f} s "
        f"({(cache.nbytes + (val_cache.nbytes if val_cache else 0)) / 2**20:.0f} MiB in memory)"
    )

    stretch = cache.stretch()
    if len(stretch) and (stretched := int((stretch > ASPECT_NOTE).sum())):
        # Squashing is the paper's classifier input and the CPU recipe's cheap one; on tall or wide images it
        # squeezes thin defects along one axis, which no later step undoes: never silent.
        log(
            f"note: squashing to {size[0]}x{size[1]} changes the aspect ratio of {stretched} of {len(stretch)} "
            f"training images by more than {ASPECT_NOTE}x (up to {stretch.max():.2f}x): defects narrow along the "
            "squeezed axis may vanish; a numeric --scale keeps the aspect ratio"
        )

    aux = (cfg.task == "recognizer" and cfg.aux_weight > 0) or (cfg.task == "segmenter" and cfg.window_loss > 0)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(
        cfg.task,
        cfg.arch,
        in_channels,
        num_classes,
        cfg.output_stride,
        aux=aux,
        standardize=cfg.standardize,
        decoder_width=cfg.decoder_width or None,
    ).to(ctx.device, memory_format=layout)
    # fused: one kernel over all parameters instead of a Python loop of small ops per tensor; on the CPU that
    # made a resnet-tiny step at 224 about 5 % faster (BENCHMARKS.md, training throughput). Same Adam arithmetic.
    fused = ctx.device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=fused)
    maker = BatchMaker(cache, cfg, ctx.rank, ctx.world_size)
    steps = maker.steps_per_epoch()
    total_steps = steps * cfg.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.warmup_steps, cfg.lr_schedule)
    )

    history: list[dict[str, Any]] = []
    step_losses: list[float] = []
    best: dict[str, float] | None = None
    start_epoch, trained_seconds = 0, 0.0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "task": cfg.task,
        "arch": cfg.arch,
        "size": list(size),
        "scale": cfg.scale,
        "in_channels": in_channels,
        "color": color,
        "classes": classes,
        "num_classes": num_classes,
        "mean": list(mean),
        "std": list(std),
        "block_size": BLOCK if cfg.task == "recognizer" else None,
        "output_stride": cfg.output_stride,
        "decoder_width": cfg.decoder_width or None,
        "aux": aux,
        "standardize": cfg.standardize,
        "pad": cfg.pad,
        "cfg": cfg.to_dict(),
        "seed": cfg.seed,
        "world_size": ctx.world_size,
        "hardware": _hardware(ctx),
    }
    resumed = None
    if cfg.resume and last_path.is_file():
        ckpt = resumed = torch.load(last_path, map_location=ctx.device, weights_only=False)
        ckpt.setdefault("decoder_width", LEGACY_DECODER_WIDTH[ckpt["arch"]] if cfg.task in SEGMENTATION_TASKS else None)
        for key in (
            "task",
            "arch",
            "in_channels",
            "classes",
            "size",
            "scale",
            "aux",
            "standardize",
            "pad",
            "decoder_width",
        ):
            if ckpt.get(key) != meta[key]:
                raise ValueError(f"cannot resume {last_path}: its {key} is {ckpt.get(key)!r}, not {meta[key]!r}")
        model.load_state_dict(ckpt["train_model"] if ckpt.get("train_model") is not None else ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        history, step_losses, best = ckpt["history"], ckpt["step_losses"], ckpt.get("best_metrics")
        start_epoch = ckpt["epoch"] + 1
        trained_seconds = ckpt.get("train_seconds", 0.0)
        log(f"resumed from {last_path} after epoch {ckpt['epoch'] + 1}")
    elif cfg.resume:
        log(f"--resume: no {last_path} yet, starting from scratch")
    # The EMA of the weights (and batch-norm statistics) is what is validated, chosen and exported: steadier
    # than the last step's weights on a few hundred images (validation AP swung by 0.2-0.3 between epochs).
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema), use_buffers=True
        )
        if cfg.ema > 0
        else None
    )
    if ema is not None and resumed is not None:
        ema.load_state_dict(resumed["ema"])
    ddp_model = D.wrap(model, ctx)
    # The window actually cut (BatchMaker clamps it to the input), not the asked-for crop: a 320 crop of a
    # 224x224 squashed image is a 224x224 window, and the log must not suggest otherwise.
    window = (
        f" ({min(cfg.crop, size[0])}x{min(cfg.crop, size[1])} windows)" if cfg.task == "recognizer" and cfg.crop else ""
    )
    log(
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; {cfg.epochs} epochs x {steps} steps "
        f"x {cfg.batch} images{window}"
    )

    autocast = cfg.amp and amp_supported(ctx.device)
    if cfg.amp:
        log(
            f"bfloat16 autocast on {ctx.device.type}"
            if autocast
            else "warning: --amp ignored: this CPU has no native bfloat16 (oneDNN), where it is slower; float32"
        )
    bar = tqdm(
        total=total_steps, initial=start_epoch * steps, desc="training", disable=not ctx.is_main, unit="step",
        dynamic_ncols=True,
    )  # fmt: skip
    for epoch in range(start_epoch, cfg.epochs):
        epoch_started = time.monotonic()
        ddp_model.train()
        epoch_losses, parts_sum = [], {}
        for batch in Prefetcher(maker, [(epoch, s) for s in range(steps)]):
            x = normalize_batch(torch.from_numpy(batch.image).to(ctx.device), mean, std)
            x = x.contiguous(memory_format=layout)
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=autocast):
                loss, parts = training_loss(ddp_model, cfg, x, batch, ctx.device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if ema is not None:
                ema.update_parameters(model)
            value = float(loss.item())
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss became {value} at epoch {epoch + 1}; lower --lr")
            epoch_losses.append(value)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
            bar.update(1)
            rate = bar.format_dict.get("rate") or 0.0
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{value:.3f}", img_s=f"{rate * cfg.batch:.1f}")
        epoch_seconds = time.monotonic() - epoch_started
        trained_seconds += epoch_seconds
        train_loss = D.mean_over_ranks(float(np.mean(epoch_losses)), ctx)
        divergence = D.replica_divergence(ddp_model, ctx)
        if ctx.is_main:
            v0 = time.monotonic()
            final = ema.module if ema is not None else model
            check = val_cache is not None and ((epoch + 1) % max(cfg.val_every, 1) == 0 or epoch + 1 == cfg.epochs)
            metrics, kept = validate(final, cfg, val_cache, mean, std, ctx.device, keep=6) if check else ({}, [])
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                **{f"train_{k}": v / len(epoch_losses) for k, v in parts_sum.items()},
                "replica_divergence": divergence,
                **metrics,
                "lr": schedule.get_last_lr()[0],
                "steps_per_s": steps / epoch_seconds,
                "images_per_s": steps * cfg.batch * ctx.world_size / epoch_seconds,
                "val_seconds": time.monotonic() - v0,
                "seconds": trained_seconds,
            }
            history.append(record)
            step_losses.extend(epoch_losses)
            improved = bool(metrics) and _is_better(metrics, best, cfg.task)
            if improved:
                best = dict(metrics)
            ckpt = {
                **meta,
                "epoch": epoch,
                "metrics": metrics,
                "best_metrics": best,
                "history": history,
                "step_losses": step_losses,
                "train_seconds": trained_seconds,
                "model": final.state_dict(),
                "train_model": model.state_dict() if ema is not None else None,
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(),
            }
            _atomic_save(ckpt, last_path)
            if cfg.keep_every > 0 and (epoch + 1) % cfg.keep_every == 0:
                _atomic_save(ckpt, out_dir / f"epoch_{epoch + 1:03d}.pt")
            if (improved and cfg.select == "best") or not val_cache or cfg.select == "last":
                _atomic_save(
                    {**ckpt, "optimizer": None, "scheduler": None, "train_model": None, "ema": None}, best_path
                )
            (out_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
            left = (cfg.epochs - epoch - 1) * (trained_seconds / (epoch + 1 - start_epoch or 1))
            log(
                f"epoch {epoch + 1}/{cfg.epochs}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "seconds"))
                + f"; {trained_seconds / 60:.1f} min so far, ETA {left / 60:.1f} min"
                + (" *" if improved else "")
            )
            if cfg.plots:
                from inspector.train.plots import plot_losses, plot_predictions

                plot_losses(history, step_losses, out_dir / "loss.png", key_metric(cfg.task))
                if kept:
                    plot_predictions(kept, cfg.task, out_dir / "predictions.png", title=f"epoch {epoch + 1}")
        D.barrier(ctx)
        if cfg.max_minutes > 0 and trained_seconds > cfg.max_minutes * 60:
            log(f"stopping after epoch {epoch + 1}: {trained_seconds / 60:.1f} min >= --max-minutes {cfg.max_minutes}")
            break
    bar.close()
    if not best_path.is_file() and last_path.is_file() and ctx.is_main:
        last = torch.load(last_path, weights_only=False)
        _atomic_save({**last, "optimizer": None, "scheduler": None, "train_model": None, "ema": None}, best_path)
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
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} is a version {ckpt.get('version')} checkpoint; this toolchain reads version "
            f"{CHECKPOINT_VERSION} (retrain, or export it with the release that wrote it)"
        )
    model = build_model(
        ckpt["task"],
        ckpt["arch"],
        ckpt["in_channels"],
        ckpt["num_classes"],
        ckpt["output_stride"],
        ckpt["aux"],
        ckpt.get("standardize", False),
        # Checkpoints written before the width was recorded were built with the then default.
        ckpt.get("decoder_width", LEGACY_DECODER_WIDTH[ckpt["arch"]]),
    )
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def deployed_from_checkpoint(path: str | Path) -> tuple[Deployed, dict[str, Any]]:
    """The export wrapper (uint8 NHWC in, probabilities out) around a checkpoint's network."""
    model, ckpt = load_checkpoint(path)
    return Deployed(model, ckpt["task"], ckpt["mean"], ckpt["std"]).eval(), ckpt
