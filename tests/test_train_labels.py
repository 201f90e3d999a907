"""Block labels from full-resolution masks (labels.py's rule)."""

from __future__ import annotations

import numpy as np
import pytest

from inspector.preprocess import resize_mask
from inspector.train.labels import block_counts, block_labels, grid_for, measure_resize


def test_single_defect_pixel_makes_its_block_defective():
    mask = np.zeros((224, 224), bool)
    mask[100, 40] = True  # row block 100 // 32 = 3, column block 40 // 32 = 1
    labels = block_labels(mask, (7, 7))
    assert labels.sum() == 1 and labels[3, 1] == 1


def test_defect_on_a_block_border_marks_both_blocks():
    mask = np.zeros((64, 64), bool)
    mask[10:12, 31:33] = True  # columns 31 and 32: either side of the border between block 0 and 1
    np.testing.assert_array_equal(block_labels(mask, (2, 2)), [[1, 1], [0, 0]])
    np.testing.assert_array_equal(block_counts(mask, (2, 2)), [[2, 2], [0, 0]])


def test_sub_block_and_thin_defects_survive_a_downscale():
    """A 1-pixel-wide crack and a 2x2 pit on a 630x400 image: a nearest resize to 224 loses them, blocks do not."""
    mask = np.zeros((400, 630), bool)
    mask[80:331, 301] = True  # vertical crack, 1 px wide
    mask[370:372, 600:602] = True  # 4-pixel pit
    resized = resize_mask(mask.astype(np.uint8), (224, 224))
    assert resized[:, 100:115].sum() < 50  # the crack is mostly gone at network resolution
    labels = block_labels(mask, (7, 7))
    column = int((301 + 0.5) * 7 / 630)
    assert labels[:, column].tolist() == [
        0,
        1,
        1,
        1,
        1,
        1,
        0,
    ]  # blocks are 400/7 = 57.1 rows: rows 80..330 -> blocks 1..5
    assert labels[6, 6] == 1  # the pit
    assert labels.sum() == 6


def test_block_rule_maps_with_the_resize_geometry():
    """Non-square images: a block spans H/gh x W/gw full-resolution pixels."""
    mask = np.zeros((289, 121), bool)
    mask[288, 120] = True  # the last pixel belongs to the last block
    mask[0, 0] = True
    labels = block_labels(mask, grid_for((224, 224)))
    assert labels[6, 6] == 1 and labels[0, 0] == 1 and labels.sum() == 2


def test_minimum_pixel_count():
    mask = np.zeros((64, 64), bool)
    mask[0:2, 0:2] = True  # 4 pixels in block (0, 0)
    mask[40, 40] = True  # 1 pixel in block (1, 1)
    np.testing.assert_array_equal(block_labels(mask, (2, 2), min_pixels=3), [[1, 0], [0, 0]])
    with pytest.raises(ValueError):
        block_labels(mask, (2, 2), min_pixels=0)


def test_grid_needs_multiples_of_32():
    assert grid_for((224, 320)) == (7, 10)
    with pytest.raises(ValueError):
        grid_for((224, 300))


def test_measure_resize_reports_lost_small_defects():
    pit = np.zeros((400, 600), bool)
    pit[200, 300] = True
    big = np.zeros((400, 600), bool)
    big[100:200, 100:200] = True
    (row,) = measure_resize([pit, big], [(224, 224)])
    assert row["blocks_kept"] == 1.0
    assert row["masks"] == 2
    assert row["tiles_mean"] == 2 * 3
    assert 0 < row["area_peak_median"] <= 1
