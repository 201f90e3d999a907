"""Decision on hand-built score maps: thresholds, areas, classes, ignore regions, coordinate scaling."""

import cv2
import numpy as np
import pytest

from inspector.config import DecisionConfig
from inspector.decision import Decider, GridMap, load_ignore_mask
from inspector.frames import Reason
from inspector.manifest import ModelManifest

CLASSES = ["background", "crack", "pit", "stain"]
FRAME = (256, 384)  # (h, w): 4x the segmenter's input, 2x the recognizer's


def _recognizer(h=128, w=192):
    return ModelManifest.model_validate(
        dict(
            task="recognizer",
            format="onnx",
            file="rec.onnx",
            sha256="0" * 64,
            architecture="test",
            input={"height": h, "width": w, "channels": 1},
            outputs=[{"name": "block_scores", "shape": ["N", h // 32, w // 32], "meaning": "P(defect)"}],
            preprocessing={"color": "gray", "mean": [0.5], "std": [0.25]},
            block_size=32,
            classes=["normal", "defect"],
        )
    )


def _segmenter(h=64, w=96):
    return ModelManifest.model_validate(
        dict(
            task="segmenter",
            format="onnx",
            file="seg.onnx",
            sha256="0" * 64,
            architecture="test",
            input={"height": h, "width": w, "channels": 1},
            outputs=[{"name": "pixel_scores", "shape": ["N", len(CLASSES), h, w], "meaning": "probabilities"}],
            preprocessing={"color": "gray", "mean": [0.5], "std": [0.25]},
            classes=CLASSES,
        )
    )


def _decider(frame=FRAME, segmenter=True, mask=None, **cfg):
    return Decider(DecisionConfig(**cfg), frame, _recognizer(), _segmenter() if segmenter else None, mask)


def _pixels(h=64, w=96):
    """All background: P(background) = 1."""
    scores = np.zeros((len(CLASSES), h, w), np.float32)
    scores[0] = 1
    return scores


def _paint(scores, region, probs):
    """Set the class probabilities (background gets the rest) inside region (a (rows, cols) slice pair)."""
    for c, p in probs.items():
        scores[CLASSES.index(c)][region] = p
    scores[0][region] = 1 - sum(probs.values())


def test_flagged_uses_the_block_threshold_inclusively():
    d = _decider(block_threshold=0.6)
    blocks = np.zeros((4, 6), np.float32)
    blocks[1, 2] = 0.59
    assert not d.flagged(blocks)
    blocks[1, 2] = 0.6
    assert d.flagged(blocks)


def test_blocks_only_groups_blocks_into_blobs_in_frame_pixels():
    d = _decider(segmenter=False, block_threshold=0.5)
    blocks = np.zeros((4, 6), np.float32)
    blocks[0, 0] = 0.7
    blocks[1, 1] = 0.9  # diagonal neighbour: same blob (8-connected)
    blocks[3, 5] = 0.55
    result, reason, defects, score = d.decide(blocks, None)
    assert (result, reason) == ("reject", Reason.DEFECT)
    assert score == pytest.approx(0.9)
    # Each block is 32 recognizer px = 64 frame px on a side.
    assert [x.area_px for x in defects] == [2 * 64 * 64, 64 * 64]  # largest first
    assert defects[0].bbox == (0, 0, 128, 128) and defects[0].cls == "defect"
    assert defects[0].score == pytest.approx(0.9)
    assert defects[1].bbox == (320, 192, 64, 64) and defects[1].score == pytest.approx(0.55)


def test_blocks_only_min_area_and_quiet_frames():
    d = _decider(segmenter=False, min_area_px=64 * 64 + 1)
    blocks = np.zeros((4, 6), np.float32)
    assert d.decide(blocks, None)[:3] == ("pass", Reason.OK, ())
    blocks[2, 2] = 0.8  # one block: 4096 px, below the minimum
    result, reason, defects, score = d.decide(blocks, None)
    assert (result, reason, defects) == ("pass", Reason.OK, ())
    assert score == pytest.approx(0.8) and d.last_below_min_area == 1


def test_pixel_blobs_scale_to_frame_pixels():
    d = _decider(pixel_threshold=0.5, min_area_px=0)
    scores = _pixels()
    _paint(scores, np.s_[10:13, 20:25], {"crack": 0.8})  # 3 x 5 segmenter px
    result, reason, defects, _ = d.decide(np.zeros((4, 6), np.float32), scores)
    assert (result, reason) == ("reject", Reason.DEFECT)
    (blob,) = defects
    assert blob.cls == "crack" and blob.score == pytest.approx(0.8)
    assert blob.area_px == 15 * 16  # one segmenter pixel = 4 x 4 frame pixels
    assert blob.bbox == (80, 40, 20, 12)


def test_pixel_threshold_is_one_minus_background_and_inclusive():
    d = _decider(pixel_threshold=0.6, min_area_px=0)
    scores = _pixels()
    # No single defect class reaches 0.6, but together they do: the defect probability is 1 - P(background).
    _paint(scores, np.s_[5:7, 5:7], {"crack": 0.3, "pit": 0.3})
    assert d.decide(np.zeros((4, 6)), scores)[0] == "reject"
    _paint(scores, np.s_[5:7, 5:7], {"crack": 0.3, "pit": 0.29})
    assert d.decide(np.zeros((4, 6)), scores)[0] == "pass"


def test_class_is_the_highest_mean_probability_in_the_blob():
    d = _decider(min_area_px=0)
    scores = _pixels()
    _paint(scores, np.s_[20:30, 20:30], {"stain": 0.7, "pit": 0.2})
    _paint(scores, np.s_[25, 25], {"pit": 0.95})  # one pixel where pit peaks: it must not decide the class
    (blob,) = d.decide(np.zeros((4, 6)), scores)[2]
    assert blob.cls == "stain"
    assert blob.score == pytest.approx(0.95)  # the score is the blob's peak defect probability


def test_min_area_per_class_overrides_the_default():
    d = _decider(min_area_px=10, min_area_px_per_class={"pit": 100})
    scores = _pixels()
    _paint(scores, np.s_[10:12, 10:13], {"pit": 0.9})  # 6 px -> 96 frame px: below the pit minimum
    result, reason, defects, _ = d.decide(np.zeros((4, 6)), scores)
    assert (result, reason, defects) == ("pass", Reason.OK, ())
    assert d.last_below_min_area == 1
    _paint(scores, np.s_[40:42, 40:43], {"crack": 0.9})  # the same size, but a crack: default minimum
    result, _, defects, _ = d.decide(np.zeros((4, 6)), scores)
    assert result == "reject" and [x.cls for x in defects] == ["crack"]


def test_defects_are_largest_first_and_capped_but_all_count():
    d = _decider(min_area_px=0, max_defects_reported=2)
    scores = _pixels()
    for i, size in enumerate([1, 4, 2, 3]):
        _paint(scores, np.s_[10 * i : 10 * i + size, 50 : 50 + size], {"crack": 0.9})
    result, _, defects, _ = d.decide(np.zeros((4, 6)), scores)
    assert result == "reject"
    assert [x.area_px for x in defects] == [16 * 16, 9 * 16]


def test_diagonal_lines_are_one_blob():
    d = _decider(min_area_px=0)
    scores = _pixels()
    for i in range(20):
        _paint(scores, np.s_[10 + i, 10 + i], {"crack": 0.9})
    defects = d.decide(np.zeros((4, 6)), scores)[2]
    assert len(defects) == 1 and defects[0].area_px == 20 * 16


def test_ignore_polygon_removes_defect_pixels():
    # Polygon over frame x 0..200, y 0..256: segmenter columns 0..49 are ignored.
    polygon = [[0, 0], [200, 0], [200, 256], [0, 256]]
    d = _decider(min_area_px=0, ignore_regions={"polygons": [polygon]})
    scores = _pixels()
    _paint(scores, np.s_[10:14, 20:30], {"crack": 0.9})  # inside: ignored
    assert d.decide(np.zeros((4, 6)), scores)[:2] == ("pass", Reason.OK)
    _paint(scores, np.s_[30:32, 45:55], {"pit": 0.9})  # straddles the edge: only the outside half counts
    (blob,) = d.decide(np.zeros((4, 6)), scores)[2]
    assert blob.area_px == 2 * 5 * 16 and blob.bbox == (200, 120, 20, 8)


def test_ignore_mask_image_works_like_a_polygon(tmp_path):
    mask = np.zeros(FRAME, np.uint8)
    mask[:, :200] = 255
    path = tmp_path / "ignore.png"
    cv2.imwrite(str(path), mask)
    d = _decider(min_area_px=0, mask=load_ignore_mask(path, FRAME))
    scores = _pixels()
    _paint(scores, np.s_[10:14, 20:30], {"crack": 0.9})
    assert d.decide(np.zeros((4, 6)), scores)[0] == "pass"
    _paint(scores, np.s_[10:14, 60:70], {"crack": 0.9})
    assert d.decide(np.zeros((4, 6)), scores)[0] == "reject"


def test_ignore_regions_silence_only_blocks_they_fully_cover():
    # Frame x 0..128 covers block columns 0 and 1 entirely; x up to 150 touches column 2 partly.
    d = _decider(segmenter=False, ignore_regions={"polygons": [[[0, 0], [150, 0], [150, 256], [0, 256]]]})
    assert d.ignored_blocks == 8
    blocks = np.zeros((4, 6), np.float32)
    blocks[:, :2] = 0.99
    assert not d.flagged(blocks)
    assert d.decide(blocks, None)[:2] == ("pass", Reason.OK)
    assert d.decide(blocks, None)[3] == 0.0  # the highest score outside ignore regions
    blocks[0, 2] = 0.7
    assert d.flagged(blocks)
    result, _, defects, score = d.decide(blocks, None)
    assert result == "reject" and defects[0].bbox == (128, 0, 64, 64) and score == pytest.approx(0.7)


def test_non_integer_scale_maps_boxes_to_the_frame_edge():
    frame = (250, 375)  # 3.90625 frame px per segmenter px on both axes
    d = _decider(frame=frame, min_area_px=0)
    scores = _pixels()
    _paint(scores, np.s_[62:64, 94:96], {"pit": 0.9})  # bottom-right corner of the segmenter grid
    (blob,) = d.decide(np.zeros((4, 6)), scores)[2]
    x, y, w, h = blob.bbox
    assert (x + w, y + h) == (375, 250)
    assert (x, y) == (367, 242)  # floor(94 * 3.90625), floor(62 * 3.90625)
    assert blob.area_px == round(4 * 3.90625**2)


def test_grid_map_covered_fraction():
    grid = GridMap.for_input((100, 100), (10, 10))
    mask = np.zeros((100, 100), bool)
    mask[:, :15] = True  # column 0 fully, column 1 half
    assert grid.covered(mask, 0.5)[:, :2].all() and not grid.covered(mask, 0.5)[:, 2].any()
    assert grid.covered(mask, 0.999)[:, 0].all() and not grid.covered(mask, 0.999)[:, 1].any()


def test_bad_setups_and_inputs_are_refused():
    with pytest.raises(ValueError, match="dent"):
        _decider(min_area_px_per_class={"dent": 5})
    with pytest.raises(ValueError, match=r"polygons\[0\] lies outside"):
        _decider(ignore_regions={"polygons": [[[1000, 1000], [1100, 1000], [1100, 1100]]]})
    with pytest.raises(ValueError, match="mask is 10x10"):
        _decider(mask=np.zeros((10, 10), np.uint8))
    d = _decider()
    with pytest.raises(ValueError, match="block scores"):
        d.decide(np.zeros((3, 6)), None)
    with pytest.raises(ValueError, match="pixel scores"):
        d.decide(np.zeros((4, 6)), np.zeros((2, 64, 96), np.float32))
    with pytest.raises(ValueError, match="without a segmenter"):
        _decider(segmenter=False).decide(np.zeros((4, 6)), _pixels())


def test_float16_outputs_are_accepted():
    d = _decider(min_area_px=0)
    scores = _pixels().astype(np.float16)
    _paint(scores, np.s_[3:5, 3:5], {"crack": 0.75})
    (blob,) = d.decide(np.zeros((4, 6), np.float16), scores)[2]
    assert blob.cls == "crack" and blob.score == pytest.approx(0.75, abs=1e-3)


@pytest.mark.parametrize("ignore", [None, [[0, 0], [150, 0], [150, 256], [0, 256]]])
def test_screening_a_batch_agrees_with_deciding_each_frame(ignore):
    """The pipeline passes a frame on screen() alone when nothing fired: that must be decide()'s answer too."""
    regions = {"polygons": [ignore]} if ignore else {}
    d = _decider(segmenter=False, block_threshold=0.7, min_area_px=0, ignore_regions=regions)
    rng = np.random.default_rng(3)
    batch = (rng.random((40, 4, 6)) * rng.choice([0.7, 1.0], size=(40, 1, 1))).astype(np.float32)
    batch[5] = 0.7  # exactly at the threshold: flagged (inclusive)
    for n in (40, 1, 17):  # the scratch grows once, then is reused for any smaller batch
        flagged, top = d.screen(batch[:n])
        assert flagged.shape == top.shape == (n,)
        for i in range(n):
            result, reason, defects, score = d.decide(batch[i], None)
            assert bool(flagged[i]) == d.flagged(batch[i])
            assert float(top[i]) == pytest.approx(score)
            if not flagged[i]:
                assert (result, reason, defects) == ("pass", Reason.OK, ())
    assert 0 < int(d.screen(batch)[0].sum()) < 40  # the batch has both kinds of frame


def test_deciding_a_screened_frame_is_deciding_it():
    d = _decider(segmenter=False, block_threshold=0.6, min_area_px=0)
    rng = np.random.default_rng(5)
    batch = rng.random((12, 4, 6)).astype(np.float32)
    d.screen(batch)
    for i in range(12):
        assert d.decide_screened(i, batch[i], None) == d.decide(batch[i], None)
    seg = _decider(min_area_px=0, pixel_threshold=0.5)
    scores = _pixels()
    _paint(scores, np.s_[10:20, 10:30], {"crack": 0.9})
    seg.screen(batch[:2])
    assert seg.decide_screened(1, batch[1], scores) == seg.decide(batch[1], scores)
