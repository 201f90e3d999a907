"""Data set readers: the generic folder layout (synthetic files) and Magnetic Tile (when present)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.train.datasets import (
    GENERIC_DEFECT,
    load_dataset,
    load_sample,
    scan_folder,
    stratified_split,
    summarize,
)

MAGNETIC_TILE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic-tile"


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def test_generic_layout_with_classes_csv(tmp_path):
    img = np.full((40, 50), 100, np.uint8)
    mask = np.zeros((40, 50), np.uint8)
    mask[10:12, 20:25] = 255
    _write(tmp_path / "images" / "a.png", img)
    _write(tmp_path / "masks" / "a.png", mask)
    _write(tmp_path / "images" / "b.jpg", img)  # no mask: defect-free
    _write(tmp_path / "images" / "c.png", img)  # class in the csv, no mask: defective without pixel labels
    (tmp_path / "classes.csv").write_text("name,class\na.png,scratch\nb,good\nc.png,stain\n")
    samples, classes = load_dataset(tmp_path)
    by_name = {s.image.name: s for s in samples}
    assert classes == ["scratch", "stain"]
    a, b, c = by_name["a.png"], by_name["b.jpg"], by_name["c.png"]
    assert (a.cls, a.defective, a.defect_area_px, a.has_pixel_labels) == ("scratch", True, 10, True)
    assert (b.cls, b.defective, b.mask) == ("good", False, None)
    assert (c.cls, c.defective, c.defect_area_px, c.has_pixel_labels) == ("stain", True, 0, False)
    image, label = load_sample(a, classes)
    assert image.shape == (40, 50, 1) and image.dtype == np.uint8
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
    assert label.sum() == 10 and (label[10:12, 20:25] == 1).all()


def test_generic_layout_class_from_subfolder_and_colour(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 2] = 200  # red in BGR on disk
    mask = np.zeros((32, 32), np.uint8)
    mask[5, 5] = 1  # any non-zero value marks a defect in the generic layout
    mask[6, 6] = 255
    _write(tmp_path / "images" / "crack" / "x.png", rgb)
    _write(tmp_path / "masks" / "crack" / "x.png", mask)
    _write(tmp_path / "images" / "good" / "y.png", rgb)
    _write(tmp_path / "images" / "z.png", rgb)
    _write(tmp_path / "masks" / "z.png", mask)  # defect pixels but no class anywhere
    samples = {s.image.name: s for s in scan_folder(tmp_path)}
    assert samples["x.png"].cls == "crack" and samples["x.png"].defect_area_px == 2
    assert samples["y.png"].cls == "good" and not samples["y.png"].defective
    assert samples["z.png"].cls == GENERIC_DEFECT and samples["z.png"].defective
    image, _ = load_sample(samples["x.png"], ["crack", GENERIC_DEFECT])
    assert image.shape == (32, 32, 3) and image[0, 0, 0] == 200  # RGB order after reading


def test_good_image_with_defect_pixels_is_refused(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2, 2] = 255
    _write(tmp_path / "images" / "good" / "a.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "masks" / "a.png", mask)
    with pytest.raises(ValueError, match="class 'good'"):
        scan_folder(tmp_path)


def test_stratified_split_keeps_every_class(tmp_path):
    from inspector.train.datasets import Sample

    samples = [
        Sample(Path(f"{c}{i}.png"), None, c, 0, c != "good") for c, n in (("good", 50), ("pit", 5)) for i in range(n)
    ]
    rest, held = stratified_split(samples, 0.2, seed=3)
    assert sorted(s.cls for s in held) == ["good"] * 10 + ["pit"]
    assert not {s.image for s in rest} & {s.image for s in held}
    assert len(rest) + len(held) == len(samples)
    assert stratified_split(samples, 0.2, seed=3) == (rest, held)  # the seed fixes it


@pytest.mark.dataset
def test_magnetic_tile_counts():
    if not MAGNETIC_TILE.is_dir():
        pytest.skip(f"Magnetic Tile data set not found at {MAGNETIC_TILE}")
    samples, classes = load_dataset(MAGNETIC_TILE)
    assert classes == ["blowhole", "break", "crack", "fray", "uneven"]
    counts = summarize(samples)
    assert counts["images"] == 1344 and counts["good"] == 952 and counts["defective"] == 392
    assert counts["small_defect"] == 49  # the data set's own count of 1..99 px defects
    assert counts["no_pixel_labels"] == 4  # the four MT_Uneven images with an empty mask
    unlabelled = [s for s in samples if not s.has_pixel_labels]
    assert all(s.cls == "uneven" and s.defective for s in unlabelled)
    image, label = load_sample(next(s for s in samples if s.cls == "crack"), classes)
    assert image.shape[2] == 1 and set(np.unique(label)) == {0, classes.index("crack") + 1}


def test_mask_threshold_follows_the_layout(tmp_path):
    from inspector.train.datasets import read_mask

    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0], mask[1, 1] = 60, 200  # an anti-aliased border pixel and a core pixel
    _write(tmp_path / "MT_Crack" / "Imgs" / "a.png", mask)
    _write(tmp_path / "generic" / "masks" / "a.png", mask)
    assert read_mask(tmp_path / "MT_Crack" / "Imgs" / "a.png").sum() == 1  # Magnetic Tile: >= 128
    assert read_mask(tmp_path / "generic" / "masks" / "a.png").sum() == 2  # generic: non-zero
