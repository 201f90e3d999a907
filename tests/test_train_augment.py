"""Joint augmentation: one warp moves image and mask together; photometric changes touch only the image."""

from __future__ import annotations

import numpy as np

from inspector.train.augment import AugmentConfig, crop_transform, photometric, warp


def _shape_image(channels: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((120, 160, channels), 40, np.uint8)
    label = np.zeros((120, 160), np.uint8)
    image[30:70, 50:110] = 220  # a bright rectangle ...
    label[30:70, 50:110] = 2  # ... labelled class 2
    return image, label


def test_geometry_moves_image_and_mask_together():
    cfg = AugmentConfig(rotation_deg=40, zoom=0.2, perspective=0.1, perspective_p=1.0, brightness=0, contrast=0)
    for channels in (1, 3):
        image, label = _shape_image(channels)
        for seed in range(6):
            rng = np.random.default_rng(seed)
            m = crop_transform((50.0, 80.0), (96, 128), rng, cfg)
            out, mask = warp(image, label, m, (96, 128))
            assert out.shape == (96, 128, channels) and out.dtype == np.uint8
            assert mask is not None and mask.shape == (96, 128) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 2}  # the image's class id, nothing invented
            bright = out[..., 0] > 130
            labelled = mask > 0
            iou = (bright & labelled).sum() / (bright | labelled).sum()
            assert iou > 0.85, f"seed {seed}: image and mask drifted apart (IoU {iou:.3f})"


def test_a_one_pixel_defect_survives_rotation_and_zoom():
    """The mask is warped with bilinear weights and '> 0': a defect is never thinned away by sampling."""
    image = np.full((64, 64, 1), 100, np.uint8)
    label = np.zeros((64, 64), np.uint8)
    label[31, 33] = 1
    cfg = AugmentConfig(rotation_deg=30, zoom=0.3, perspective=0, brightness=0, contrast=0)
    for seed in range(20):
        m = crop_transform((32.0, 32.0), (64, 64), np.random.default_rng(seed), cfg)
        _, mask = warp(image, label, m, (64, 64))
        assert mask is not None and mask.any(), f"seed {seed}: the defect vanished"


def test_without_augmentation_a_crop_is_an_exact_cut():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (80, 100, 1), dtype=np.uint8)
    label = (rng.random((80, 100)) > 0.9).astype(np.uint8)
    m = crop_transform((40.0, 50.0), (32, 64), None, None)  # centre (40, 50): rows 24..56, columns 18..82
    out, mask = warp(image, label, m, (32, 64))
    np.testing.assert_array_equal(out, image[24:56, 18:82])
    np.testing.assert_array_equal(mask, label[24:56, 18:82])
    # Outside the image: zeros, the border the daemon puts around a placed frame.
    m = crop_transform((0.0, 0.0), (32, 32), None, None)
    out, _ = warp(image, label, m, (32, 32))
    assert not out[:16].any() and not out[:, :16].any() and np.array_equal(out[16:, 16:], image[:16, :16])


def test_photometric_changes_touch_only_the_image_and_keep_the_zero_border():
    image, _ = _shape_image(3)
    image[..., 1] = 90  # some colour, so saturation has something to change
    image[:10] = 0  # a zero border, as around a placed frame
    before = image.copy()
    cfg = AugmentConfig(brightness=0.5, contrast=0.5, saturation=0.5)
    out = photometric(image, np.random.default_rng(1), cfg)
    assert not np.array_equal(out, before)
    assert not out[:10].any()  # 0 stays 0 whatever the brightness did


def test_disabled_is_the_identity():
    image, label = _shape_image(1)
    assert photometric(image.copy(), None, None).tobytes() == image.tobytes()
    m = crop_transform((60.0, 80.0), (120, 160), np.random.default_rng(0), AugmentConfig(enabled=False))
    out, mask = warp(image, label, m, (120, 160))
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(mask, label)


def test_a_mask_with_two_defect_classes_keeps_each_class_id():
    image = np.full((64, 96, 1), 90, np.uint8)
    label = np.zeros((64, 96), np.uint8)
    label[10:20, 10:30] = 1
    label[40:50, 60:80] = 3
    shift = crop_transform((32.0, 48.0), (64, 96), None, None)  # an exact cut: the whole image
    _, mask = warp(image, label, shift, (64, 96))
    np.testing.assert_array_equal(mask, label)
    rotated = crop_transform((32.0, 48.0), (64, 96), np.random.default_rng(1), AugmentConfig(rotation_deg=20))
    _, mask = warp(image, label, rotated, (64, 96))
    assert mask is not None and set(np.unique(mask)) == {0, 1, 3}  # each class id moved, none merged or invented
