import csv

import cv2
import numpy as np
import pytest

from inspector.synth import KINDS, SMALL_PX, random_part, render_part, write_dataset


def _pair(seed: int, kind: str, small: bool, size=(160, 200), channels=1):
    """The same part rendered good and defective (render_part keeps the two identical outside the defect)."""
    good, good_label, good_truth = render_part(np.random.default_rng(seed), *size, defective=False, channels=channels)
    bad, label, truth = render_part(
        np.random.default_rng(seed), *size, defective=True, kind=kind, small=small, channels=channels
    )
    return good, bad, label, truth, good_label, good_truth


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("small", [False, True])
def test_mask_is_exactly_where_the_defect_was_drawn(kind, small):
    for seed in range(4):
        good, bad, label, truth, good_label, good_truth = _pair(seed, kind, small)
        assert not good_truth.defective and good_truth.defect_area_px == 0 and not good_label.any()
        assert truth.defective and truth.kind == kind
        assert truth.defect_area_px == np.count_nonzero(label)
        assert set(np.unique(label)) == {0, 1 + KINDS.index(kind)}
        changed = np.any(good != bad, axis=2)
        # Nothing outside the mask was touched ...
        assert not np.any(changed & (label == 0))
        # ... and the defect changed the pixels it labels (weak ones by a grey level or so, which rounding can
        # swallow at the soft edge of a faint stain, hence not all of them).
        assert np.count_nonzero(changed & (label > 0)) >= 0.5 * truth.defect_area_px


@pytest.mark.parametrize("kind", KINDS)
def test_small_defects_stay_under_100_px_and_others_reach_it(kind):
    rng = np.random.default_rng(7)
    for _ in range(12):
        _, _, small = render_part(rng, 128, 160, defective=True, kind=kind, small=True)
        assert 0 < small.defect_area_px < SMALL_PX
        _, _, large = render_part(rng, 128, 160, defective=True, kind=kind, small=False)
        assert large.defect_area_px >= SMALL_PX


def test_same_seed_same_part_other_seed_other_part():
    a = render_part(np.random.default_rng(3), 96, 128, defective=True, kind="crack")
    b = render_part(np.random.default_rng(3), 96, 128, defective=True, kind="crack")
    c = render_part(np.random.default_rng(4), 96, 128, defective=True, kind="crack")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_image_looks_like_a_part_on_a_belt():
    image, _, _ = render_part(np.random.default_rng(0), 240, 320, defective=False, channels=3)
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    centre = image[100:140, 140:180].astype(float).mean()
    corner = image[:6, :6].astype(float).mean()
    assert centre > corner + 40  # a lit part on a dark conveyor
    assert image[100:140, 140:180].std() > 1  # textured and noisy, not flat


def test_colour_defects_share_the_grey_label_convention():
    good, bad, label, truth, _, _ = _pair(5, "stain", False, channels=3)
    assert bad.shape == (160, 200, 3)
    assert not np.any(np.any(good != bad, axis=2) & (label == 0))
    assert truth.defect_area_px == np.count_nonzero(label)


def test_bad_arguments_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown defect kind"):
        render_part(rng, 64, 64, defective=True, kind="dent")
    with pytest.raises(ValueError, match="good part"):
        render_part(rng, 64, 64, defective=False, kind="pit")
    with pytest.raises(ValueError, match="at least"):
        render_part(rng, 32, 64, defective=False)
    with pytest.raises(ValueError, match="channels"):
        render_part(rng, 64, 64, defective=False, channels=2)


def test_random_part_draws_from_the_given_kinds_at_the_given_rate():
    rng = np.random.default_rng(1)
    truths = [random_part(rng, 64, 64, defect_probability=0.5, small_fraction=0.5, kinds=["pit"])[2] for _ in range(60)]
    defective = [t for t in truths if t.defective]
    assert 15 <= len(defective) <= 45
    assert {t.kind for t in defective} == {"pit"}
    assert any(t.defect_area_px < SMALL_PX for t in defective) and any(t.defect_area_px >= SMALL_PX for t in defective)


def test_write_dataset_generic_layout_is_deterministic(tmp_path):
    write_dataset(tmp_path / "a", 10, seed=11, size=(64, 96))
    write_dataset(tmp_path / "b", 10, seed=11, size=(64, 96))
    rows = list(csv.reader((tmp_path / "a" / "classes.csv").open()))
    assert rows[0] == ["name", "class"] and len(rows) == 11
    for name, cls in rows[1:]:
        assert cls in (*KINDS, "good")
        image_a = (tmp_path / "a" / "images" / name).read_bytes()
        assert image_a == (tmp_path / "b" / "images" / name).read_bytes()
        mask_path = tmp_path / "a" / "masks" / name
        assert mask_path.is_file() == (cls != "good")
        image = cv2.imread(str(tmp_path / "a" / "images" / name), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 96)
        if cls != "good":
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (64, 96) and set(np.unique(mask)) == {0, 255}
    assert {cls for _, cls in rows[1:]} - {"good"}  # some defective parts at p = 0.5


def test_write_dataset_is_read_back_by_the_training_reader(tmp_path):
    from inspector.train.datasets import load_dataset

    write_dataset(tmp_path, 12, seed=2, size=(64, 64), channels=3)
    samples, classes = load_dataset(tmp_path)
    assert len(samples) == 12 and set(classes) <= set(KINDS)
    rows = dict(list(csv.reader((tmp_path / "classes.csv").open()))[1:])
    for s in samples:
        assert s.cls == rows[s.image.name]
        assert s.defective == (s.defect_area_px > 0)
