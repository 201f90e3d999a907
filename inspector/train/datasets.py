"""Data sets on disk -> `Sample` records -> (image, label mask) arrays.

Two layouts are read directly, without conversion:

- **Magnetic Tile** (Huang, Qiu, Yuan, The Visual Computer 2018): ``MT_<Class>/Imgs/NAME.jpg`` with its
  mask ``NAME.png``. ``MT_Free`` is the defect-free class ("good"); the other five folders name the defect
  class (lower-cased: blowhole, break, crack, fray, uneven).
- **Generic folder** (what a user produces for their own line): ``images/NAME.ext`` or
  ``images/<class>/NAME.ext``, an optional ``masks/NAME.png`` (or ``masks/<class>/NAME.png``) where non-zero
  marks defect pixels, and optionally ``classes.csv`` with rows ``name,class`` (name with or without the
  extension; a header row ``name,class`` is allowed). Class "good" (or no class and no defect pixels) means
  defect-free; an image with defect pixels but no class gets the class "defect".

Mask threshold. In the generic layout any non-zero mask value is a defect (so 1, 255 or a class id all
work). Magnetic Tile's masks are anti-aliased (every value 0..255 occurs at defect borders), so there a pixel
is a defect pixel when its mask value is >= 128 (`MT_MASK_THRESHOLD`); with that rule the data set has exactly
the 49 small defective images (1..99 px) its description states, with "> 0" it would have 32. Each Sample
carries its threshold.

Label noise (4 `MT_Uneven` images whose mask is empty). Decision: they stay **defective at image level**
(the data set's authors filed them as Uneven, and a user's folder can hold the same: a defect class without
pixels), with ``defect_area_px == 0`` and ``Sample.has_pixel_labels == False``. Consequences, all explicit:
they are excluded from training (no defective block or pixel can be drawn from them, and their all-background
mask would teach "this is background"), excluded from pixel-level metrics, and kept in image-level metrics,
where a model that misses them is counted as missing them. `summarize()` counts them; training logs the count.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

GOOD = "good"
GENERIC_DEFECT = "defect"  # class of a defective image in a generic folder that names no class
MT_MASK_THRESHOLD = 128
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path | None  # None: no mask file (defect-free, or a class without pixel annotation)
    cls: str  # "good" for defect-free
    defect_area_px: int  # defect pixels in the mask at full resolution (mask >= mask_threshold)
    defective: bool
    mask_threshold: int = 1  # mask values >= this are defect pixels (1 = non-zero; Magnetic Tile: 128)
    group: str = ""  # the physical part (or batch) the image shows; splits keep a group on one side (splits.py)

    @property
    def has_pixel_labels(self) -> bool:
        """False for a defective image whose mask marks nothing (label noise): unusable for pixel supervision."""
        return not self.defective or self.defect_area_px > 0


def layout_mask_threshold(path: Path) -> int:
    """The mask threshold of the layout a mask file lies in: Magnetic Tile's (MT_<class>/Imgs/) or non-zero."""
    path = Path(path)
    return MT_MASK_THRESHOLD if path.parent.name == "Imgs" and path.parent.parent.name.startswith("MT_") else 1


def read_mask(path: Path, threshold: int | None = None) -> np.ndarray:
    """Mask file -> (H, W) bool defect map: values >= threshold (8-bit masks), non-zero (others).

    Without a threshold, the rule of the layout the file lies in (`layout_mask_threshold`), so a caller
    holding only a path still reads a Magnetic Tile mask the way its data set description counts it.
    """
    if threshold is None:
        threshold = layout_mask_threshold(path)
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise OSError(f"cannot read mask {path}")
    if mask.ndim == 3:  # a colour-saved mask: any channel marks the defect
        mask = mask.max(axis=2)
    if mask.dtype != np.uint8:  # 16-bit or float masks: non-zero means defect, like the generic layout says
        return mask > 0
    return mask >= threshold


def read_image(path: Path) -> np.ndarray:
    """Image file -> (H, W, C) uint8, C = 1 (grayscale) or 3 (RGB order)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f"cannot read image {path}")
    if image.dtype == np.uint16:  # 16-bit industrial cameras: keep the top 8 bits, the network input is uint8
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"{path}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return image[:, :, None]
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[2] == 1:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _area(mask: Path | None, threshold: int = 1) -> int:
    return int(read_mask(mask, threshold).sum()) if mask is not None else 0


def scan_magnetic_tile(root: str | Path) -> list[Sample]:
    root = Path(root)
    folders = sorted(p for p in root.glob("MT_*") if (p / "Imgs").is_dir())
    if not folders:
        raise FileNotFoundError(f"{root}: no MT_<class>/Imgs folders (not the Magnetic Tile layout)")
    samples = []
    for folder in folders:
        name = folder.name[3:].lower()
        cls = GOOD if name == "free" else name
        for image in sorted((folder / "Imgs").glob("*.jpg")):
            mask = image.with_suffix(".png")
            if not mask.is_file():
                raise FileNotFoundError(f"{image}: mask {mask.name} missing")
            area = _area(mask, MT_MASK_THRESHOLD)
            if cls == GOOD and area:
                raise ValueError(f"{mask}: a defect-free (MT_Free) image with {area} defect pixels")
            samples.append(Sample(image, mask, cls, area, cls != GOOD, MT_MASK_THRESHOLD))
    return samples


def _read_classes_csv(path: Path) -> dict[str, str]:
    """name -> class; names are matched with and without their extension."""
    table: dict[str, str] = {}
    with path.open(newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{i + 1}: expected 'name,class', got {row!r}")
            name, cls = row[0].strip(), row[1].strip()
            if i == 0 and name.lower() == "name" and cls.lower() == "class":
                continue
            table[name] = cls
            table[Path(name).stem] = cls
    return table


def scan_folder(root: str | Path) -> list[Sample]:
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{root}: no images/ folder (not the generic layout)")
    classes_csv = root / "classes.csv"
    table = _read_classes_csv(classes_csv) if classes_csv.is_file() else {}
    samples = []
    for image in sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        rel = image.relative_to(images_dir)
        mask = next(
            (m for m in (masks_dir / rel.with_suffix(".png"), masks_dir / f"{image.stem}.png") if m.is_file()), None
        )
        area = _area(mask)
        folder_cls = rel.parts[0] if len(rel.parts) > 1 else None
        cls = table.get(rel.as_posix(), table.get(image.name, table.get(image.stem, folder_cls)))
        if cls is None:
            cls = GENERIC_DEFECT if area else GOOD
        if cls == GOOD and area:
            raise ValueError(f"{image}: class 'good' but its mask {mask} marks {area} defect pixels")
        samples.append(Sample(image, mask, cls, area, defective=cls != GOOD))
    if not samples:
        raise FileNotFoundError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return samples


def is_magnetic_tile(path: Path) -> bool:
    return any((p / "Imgs").is_dir() for p in path.glob("MT_*"))


def load_dataset(path: str | Path) -> tuple[list[Sample], list[str]]:
    """Samples and the defect class names (sorted: a fixed order, independent of file order; no "good")."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data set folder not found: {path}")
    samples = scan_magnetic_tile(path) if is_magnetic_tile(path) else scan_folder(path)
    classes = sorted({s.cls for s in samples if s.defective})
    return samples, classes


def load_sample(sample: Sample, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> image (H, W, C) uint8 as stored (gray stays 1 channel, colour is RGB), label (H, W) uint8:
    0 background, 1 + classes.index(cls) on the sample's defect pixels."""
    image = read_image(sample.image)
    label = np.zeros(image.shape[:2], np.uint8)
    if sample.defective and sample.mask is not None:
        mask = read_mask(sample.mask, sample.mask_threshold)
        if mask.shape != label.shape:
            raise ValueError(f"{sample.mask}: mask {mask.shape} and image {label.shape} differ in size")
        label[mask] = 1 + classes.index(sample.cls)
    return image, label


def summarize(samples: list[Sample], small_px: int = 100) -> dict[str, int]:
    """Counts a report or a log line needs: per class, small defects, unlocalised defective images."""
    counts = Counter(s.cls for s in samples)
    return {
        "images": len(samples),
        "good": counts.get(GOOD, 0),
        "defective": sum(s.defective for s in samples),
        "small_defect": sum(s.defective and 0 < s.defect_area_px < small_px for s in samples),
        "no_pixel_labels": sum(not s.has_pixel_labels for s in samples),
        **{f"class_{c}": n for c, n in sorted(counts.items()) if c != GOOD},
    }


def image_pixel_format(image: np.ndarray) -> str:
    """The inspector.preprocess pixel format of an array from `load_sample`."""
    return "mono8" if image.shape[2] == 1 else "rgb8"


def stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(rest, held_out): `fraction` of every class drawn at random (at least one per class with >= 2 images)."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.cls, []).append(s)
    rest, held = [], []
    for cls in sorted(by_class):
        group = by_class[cls]
        order = rng.permutation(len(group))
        n = round(fraction * len(group))
        if fraction > 0 and n == 0 and len(group) >= 2:
            n = 1
        held += [group[i] for i in order[:n]]
        rest += [group[i] for i in order[n:]]
    return rest, held
