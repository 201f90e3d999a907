"""Joint augmentation keeps image and mask aligned."""

from __future__ import annotations

import numpy as np
import torch

from inspector.train.augment import AugmentConfig, apply_augment, build_augment


def _shape_image(channels: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((120, 160, channels), 40, np.uint8)
    label = np.zeros((120, 160), np.uint8)
    image[30:70, 50:110] = 220  # a bright rectangle ...
    label[30:70, 50:110] = 2  # ... labelled class 2
    image[90:94, 20:140] = 220  # and a thin bar, class 1
    label[90:94, 20:140] = 1
    return image, label


def test_geometry_moves_image_and_mask_together():
    cfg = AugmentConfig(rotation_deg=40, perspective=0.3, perspective_p=1.0, brightness=0.0, saturation=0.0)
    transform = build_augment(cfg)
    for channels in (1, 3):
        image, label = _shape_image(channels)
        for seed in range(5):
            torch.manual_seed(seed)
            out, mask = apply_augment(transform, image, label)
            assert out.shape == image.shape and out.dtype == np.uint8
            assert mask.shape == label.shape and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 1, 2}  # nearest neighbour: no invented class ids
            assert not np.array_equal(mask, label)  # it did move
            bright = out[..., 0] > 130
            labelled = mask > 0
            iou = (bright & labelled).sum() / (bright | labelled).sum()
            assert iou > 0.9, f"seed {seed}: image and mask drifted apart (IoU {iou:.3f})"


def test_photometric_changes_touch_only_the_image():
    transform = build_augment(AugmentConfig(rotation_deg=0, perspective=0, brightness=0.5, saturation=0.5))
    image, label = _shape_image(3)
    image[..., 1] = 90  # some colour, so saturation has something to change
    torch.manual_seed(1)
    out, mask = apply_augment(transform, image, label)
    np.testing.assert_array_equal(mask, label)
    assert not np.array_equal(out, image)


def test_disabled_is_the_identity():
    image, label = _shape_image(1)
    assert build_augment(AugmentConfig(enabled=False)) is None
    out, mask = apply_augment(None, image, label)
    assert out is image and mask is label
