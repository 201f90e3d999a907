"""The training data path: the cache, crops and their labels, placement, and what the network sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import make_dataset

from inspector.preprocess import place_image, placed_scale, placed_size, valid_grid
from inspector.train.augment import AugmentConfig
from inspector.train.data import (
    ImageCache,
    block_targets,
    cell_counts,
    dense_targets,
    input_size_for,
    placed_input,
    scale_label,
)
from inspector.train.datasets import load_dataset
from inspector.train.recipe import BatchMaker, TrainConfig, balanced_bce, balanced_ce

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list, list[str]]:
    root = make_dataset(tmp_path_factory.mktemp("synthetic"), n=24, size=(100, 140), seed=3)
    samples, classes = load_dataset(root)
    return root, samples, classes


def test_cached_and_uncached_loaders_give_identical_batches(data):
    _, samples, classes = data
    for task, scale in (("recognizer", 1.0), ("classifier", None), ("segmenter", 0.75)):
        cfg = TrainConfig(task=task, arch="resnet-tiny", scale=scale, batch=6, crop=64, augment=AugmentConfig())
        size = (128, 160) if scale else (96, 96)
        cached = ImageCache(samples, classes, scale, size, "gray")
        lazy = ImageCache(samples, classes, scale, size, "gray", lazy=True)
        assert cached.nbytes > 0 and lazy.nbytes == 0  # the lazy one keeps nothing
        for epoch, step in ((0, 0), (1, 3)):
            a, b = BatchMaker(cached, cfg).make(epoch, step), BatchMaker(lazy, cfg).make(epoch, step)
            for key in ("image", "defective", "blocks", "dense", "seg", "crop_box"):
                x, y = getattr(a, key), getattr(b, key)
                assert (x is None) == (y is None), key
                if x is not None:
                    np.testing.assert_array_equal(x, y, err_msg=f"{task} {key}")
        # A batch is a pure function of (seed, epoch, step): asking twice gives the same pixels.
        np.testing.assert_array_equal(
            BatchMaker(cached, cfg).make(2, 1).image, BatchMaker(cached, cfg).make(2, 1).image
        )


def test_batches_are_balanced_and_visit_every_image(data):
    _, samples, classes = data
    cfg = TrainConfig(task="recognizer", arch="resnet-tiny", batch=4, crop=64)
    cache = ImageCache(samples, classes, 1.0, (128, 160), "gray")
    maker = BatchMaker(cache, cfg)
    n_good = sum(not s.defective for s in samples)
    steps = -(-n_good // 2)  # 2 good images per step: one pass over the good ones
    for step in range(steps):
        batch = maker.make(0, step)
        assert batch.defective.tolist() == [True, True, False, False]
        assert batch.blocks.shape == (4, 2, 2) and batch.dense.shape == (4, 8, 8)
    # Every defect-free image is drawn once per pass before any is drawn twice ("frequency of use").
    drawn = [maker.good[maker.visit_good.at(p)] for p in range(n_good)]
    assert sorted(drawn) == sorted(maker.good)


def test_block_and_dense_targets_agree_on_a_hand_made_mask():
    label = np.zeros((64, 96), np.uint8)
    label[5, 40] = 3  # one pixel in block (0, 1), dense cell (0, 5)
    label[40:44, 70:90] = 1  # a bar in blocks (1, 2); dense cells rows 5, columns 8..11
    blocks = block_targets(label, 32)
    np.testing.assert_array_equal(blocks, [[0, 1, 0], [0, 0, 1]])
    dense = dense_targets(label, 8, dilate_px=0)
    assert dense.shape == (8, 12)
    assert set(zip(*np.nonzero(dense), strict=True)) == {(0, 5), *((5, c) for c in range(8, 12))}
    # Every defective block holds a defective dense cell, every defective dense cell lies in a defective block.
    pooled = dense.reshape(2, 4, 3, 4).max(axis=(1, 3))
    np.testing.assert_array_equal(pooled, blocks)
    # Dilation grows the dense target, never the block labels' meaning (they count the raw mask).
    assert dense_targets(label, 8, dilate_px=4).sum() > dense.sum()
    assert block_targets(label, 32, min_pixels=2).tolist() == [[0, 0, 0], [0, 0, 1]]


@pytest.mark.parametrize("cell", [4, 8, 32])
def test_cell_counts_equal_a_plain_count_of_each_cell(cell):
    # The area-resize shortcut against the obvious reshape-and-sum, on sparse, dense, empty and full masks.
    rng = np.random.default_rng(cell)
    for shape in ((cell, cell), (3 * cell, 5 * cell), (7 * cell, 2 * cell)):
        for density in (0.0, 0.002, 0.3, 1.0):
            mask = rng.random(shape) < density
            h, w = shape
            expected = mask.reshape(h // cell, cell, w // cell, cell).sum(axis=(1, 3))
            np.testing.assert_array_equal(cell_counts(mask, cell), expected)
            np.testing.assert_array_equal(cell_counts(mask.astype(np.uint8), cell), expected)
    with pytest.raises(ValueError, match="whole number"):
        cell_counts(np.zeros((cell + 1, cell), bool), cell)


def test_downscaled_labels_keep_one_pixel_defects():
    label = np.zeros((200, 300), np.uint8)
    label[101, 149] = 2
    small = scale_label(label, (50, 75))
    assert small.sum() > 0 and set(np.unique(small)) == {0, 2}


def test_placement_keeps_the_aspect_ratio_and_is_reported():
    image = np.full((120, 300, 1), 200, np.uint8)
    out, placed = place_image(image, 1.0, (128, 320))
    assert placed == (120, 300) and out.shape == (128, 320, 1)
    assert (out[:120, :300] == 200).all() and not out[120:].any() and not out[:, 300:].any()
    assert valid_grid(placed, 32) == (4, 10)
    # Too large for the input at this scale: shrunk further, the same factor on both axes.
    assert placed_size((240, 600), 1.0, (128, 320)) == (128, 320)
    assert placed_size((300, 600), 1.0, (128, 320)) == (128, 256)
    assert placed_scale((300, 600), 1.0, (128, 320)) == pytest.approx(128 / 300, abs=0.01)
    assert input_size_for([(100, 140), (250, 90)], 0.5) == (128, 96)


def test_crops_and_full_frame_inference_line_up_block_for_block():
    """A crop cut at a block-aligned offset gets the frame's block labels there, and the recognizer's block
    scores on the crop equal its scores on the whole frame wherever the crop border is out of reach."""
    from inspector.train.models import build_recognizer, mean_std, normalize_batch

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (640, 640, 1), dtype=np.uint8)
    label = np.zeros((640, 640), np.uint8)
    label[300:310, 290:300] = 1
    # Check block alignment on a crop cut at a block boundary.
    top, left = 64, 96
    crop = frame[top : top + 512, left : left + 512]
    crop_label = label[top : top + 512, left : left + 512]
    np.testing.assert_array_equal(block_targets(crop_label), block_targets(label)[2:18, 3:19])
    model = build_recognizer("resnet-tiny", 1).eval()
    mean, std = mean_std(1)
    with torch.no_grad():
        full = model(normalize_batch(torch.from_numpy(frame[None]), mean, std))[0, 1]
        part = model(normalize_batch(torch.from_numpy(np.ascontiguousarray(crop)[None]), mean, std))[0, 1]
    # resnet-tiny's receptive field is 195 px (~3 blocks each side): compare the blocks 4+ blocks inside.
    torch.testing.assert_close(part[4:12, 4:12], full[2 + 4 : 2 + 12, 3 + 4 : 3 + 12], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(part[0, 0], full[2, 3], atol=1e-4)  # at the crop border, padding differs


def test_placed_input_is_what_the_daemon_feeds(data):
    _, samples, classes = data
    cache = ImageCache(samples[:3], classes, 1.0, (128, 160), "gray")
    for i, s in enumerate(samples[:3]):
        from inspector.train.datasets import read_image

        expected, _ = place_image(read_image(s.image), 1.0, (128, 160))
        np.testing.assert_array_equal(placed_input(cache[i], (128, 160)), expected)


def test_balanced_losses_weigh_both_kinds_equally():
    logits = torch.zeros(2, 2, 2, 2)
    target = torch.zeros(2, 2, 2, dtype=torch.long)
    target[0, 0, 0] = 1
    logits[0, 1, 0, 0] = 5.0  # the one defective block is confidently right
    loss = balanced_ce(logits, target)
    ce_pos = torch.nn.functional.cross_entropy(torch.tensor([[0.0, 5.0]]), torch.tensor([1]))
    assert loss.item() == pytest.approx(0.5 * ce_pos.item() + 0.5 * np.log(2), rel=1e-5)
    # Hard negatives: the normal mean over the hardest ones only.
    logits[1, 1, 1, 1] = 3.0  # one normal block called defective
    hard = balanced_ce(logits, target, hard_negatives=1.0)
    assert hard.item() > balanced_ce(logits, target).item()
    dense = torch.zeros(1, 4, 4)
    truth = torch.zeros(1, 4, 4)
    truth[0, 0, 0] = 1
    assert balanced_bce(dense, truth).item() == pytest.approx(np.log(2), rel=1e-5)


def test_per_image_weighting_gives_a_one_block_defect_the_weight_of_a_large_one():
    # Image 0: one large defect over 8 blocks, all confidently right. Image 1: a one-block defect, missed.
    logits = torch.zeros(2, 2, 4, 4)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2, :] = 1
    logits[0, 1, :2, :] = 8.0
    target[1, 3, 3] = 1
    logits[1, 0, 3, 3] = 4.0  # the small defect's block scored normal
    ce = torch.nn.functional.cross_entropy
    right = ce(torch.tensor([[0.0, 8.0]]), torch.tensor([1])).item()
    missed = ce(torch.tensor([[4.0, 0.0]]), torch.tensor([1])).item()
    normal = np.log(2)
    pooled = balanced_ce(logits, target)
    assert pooled.item() == pytest.approx(0.5 * (8 * right + missed) / 9 + 0.5 * normal, rel=1e-5)
    per_image = balanced_ce(logits, target, per_image=True)
    assert per_image.item() == pytest.approx(0.5 * (right + missed) / 2 + 0.5 * normal, rel=1e-5)
    # The same for the dense loss, and cells outside `valid` count on neither side.
    dense = torch.where(target > 0, torch.tensor(8.0), torch.tensor(0.0))
    dense[1, 3, 3] = -4.0
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[1, 0, 0] = False
    dense[1, 0, 0] = 50.0  # would be a huge false positive if it were scored
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    right_d = bce(torch.tensor(8.0), torch.tensor(1.0)).item()
    missed_d = bce(torch.tensor(-4.0), torch.tensor(1.0)).item()
    got = balanced_bce(dense, target.float(), valid, per_image=True)
    assert got.item() == pytest.approx(0.5 * (right_d + missed_d) / 2 + 0.5 * normal, rel=1e-5)
    with pytest.raises(ValueError, match="positive_weight"):
        TrainConfig(positive_weight="pixel")
