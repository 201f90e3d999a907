"""Joint image/mask augmentation: rotation, slight perspective, brightness and saturation (the paper's set).

Applied at full resolution, before the resize to the network input, so block labels are still counted on
full-resolution masks after the geometry changed. torchvision.transforms.v2 applies one random geometry to
every tv_tensor of a call: the image is interpolated bilinearly, the `tv_tensors.Mask` with nearest neighbour
(class ids stay class ids); the photometric transforms touch only the image. Pixels rotated in from outside
the frame are 0 in both (black, background).

Randomness comes from torch's global generator; callers run it inside `torch.random.fork_rng` seeded per item
(see recipe.py), so an item's augmentation depends only on (seed, epoch, index), not on worker count,
process rank or whether training was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


@dataclass
class AugmentConfig:
    enabled: bool = True
    rotation_deg: float = 10.0  # uniform in [-deg, +deg]
    perspective: float = 0.1  # v2.RandomPerspective distortion_scale: "slight"
    perspective_p: float = 0.5
    brightness: float = 0.2  # factor uniform in [1 - b, 1 + b]
    saturation: float = 0.2  # colour images only; grayscale has no saturation
    hflip: bool = False  # not in the paper; valid for most parts, so offered
    vflip: bool = False


def build_augment(cfg: AugmentConfig) -> v2.Transform | None:
    if not cfg.enabled:
        return None
    steps: list[v2.Transform] = []
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.vflip:
        steps.append(v2.RandomVerticalFlip())
    if cfg.rotation_deg > 0:
        steps.append(v2.RandomRotation(cfg.rotation_deg, interpolation=v2.InterpolationMode.BILINEAR, fill=0))
    if cfg.perspective > 0 and cfg.perspective_p > 0:
        steps.append(v2.RandomPerspective(cfg.perspective, p=cfg.perspective_p, fill=0))
    if cfg.brightness > 0 or cfg.saturation > 0:
        steps.append(v2.ColorJitter(brightness=cfg.brightness or None, saturation=cfg.saturation or None))
    return v2.Compose(steps) if steps else None


def apply_augment(
    transform: v2.Transform | None, image: np.ndarray, label: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) uint8 image and (H, W) uint8 label -> the same, transformed jointly."""
    if transform is None:
        return image, label
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    # Grayscale: v2.ColorJitter leaves saturation out for one channel and still applies the brightness.
    out_img, out_mask = transform(img, tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(label))))
    return out_img.permute(1, 2, 0).contiguous().numpy(), out_mask.numpy()
