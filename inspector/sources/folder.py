"""Folder replay: images from a directory, shown as a camera would (for benchmarks, regression runs on recorded
parts, demos on a real data set, and checking the daemon against `inspector-train evaluate`).

Native size. Each image is delivered as it is on disk, at its own size, at the top-left of the ring slot; the
pipeline inspects a frame smaller than its slot as itself, and the model's preprocessing (its manifest's
`fit`: squash or place at `scale`) resizes it exactly once, as training and evaluation do. The source never
resizes: an image larger than the slot (source.width x source.height) is a bad frame saying so, never squashed.
So a replay of a test split gives the daemon the very inputs `inspector-train evaluate` scores.

Start-up reads headers only. open() lists the files and reads each one's size from its header
(`image_header`), decoding nothing: a folder of 10 000 images opens in about a second, and a file whose header
claims more pixels than the slot holds (a decompression bomb: a 60 KB PNG claiming 60000 x 60000) is refused
before a byte of it is decoded. An image is decoded when its turn comes, and kept (up to `CACHE_BYTES` in all)
so that a looping replay shows it again from memory: after the first pass, grab() is one copy into the slot.
`preload: true` decodes them all at open() instead (benchmarks: the first pass then measures no disk either).

Nothing is skipped silently. An image that cannot be replayed (empty, not an image, truncated, header or
decoder error, not 8- or 16-bit, larger than the slot) is still delivered in its turn, as a Grab with
`bad_frame` saying why (its file name first); the slot is not written, and the pipeline rejects the frame with
reason bad_frame. Every Grab names its file (`source_name`, the path relative to the folder): verdicts of a
replay say which image they are about.

Pixels, as training reads them (`inspector.train.datasets.read_image`): 16-bit images keep their top 8 bits,
an alpha channel is dropped, then the image is converted to the ring's pixel format. Colour images replayed
into a mono8 ring are converted to grey before the model's resize, training converts after it: for a colour
data set, replay into rgb8 to feed the models bit-identical inputs.

Ground truth (`masks: true`), as the training layouts define it (`inspector.train.datasets`): mask files are
not frames (a PNG beside a same-named image of another extension, Magnetic Tile's NAME.jpg + NAME.png, and
anything under a `masks/` folder); the class comes from `classes.csv` at the root (by relative path, name or
stem), an `images/<class>/` folder or an `MT_<Class>` folder (`good` / `MT_Free` is defect-free); a mask pixel
is a defect when it is non-zero (>= 128 in Magnetic Tile, whose masks are anti-aliased). An image with no mask
and no class is defect-free, as in training. Masks are read with their image, never at start-up.

`path` is used as given; the daemon resolves it relative to the config file before building the source.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inspector.config import FolderSourceConfig
from inspector.frames import CHANNELS, GroundTruth
from inspector.sources.base import EndOfStream, Grab, SourceError, SourceEvents
from inspector.sources.image_header import HeaderError, image_size
from inspector.sources.pacing import Pacer

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MT_MASK_THRESHOLD = 128  # Magnetic Tile's anti-aliased masks (inspector.train.datasets.MT_MASK_THRESHOLD)
CACHE_BYTES = 4 << 30  # decoded images kept for the next pass of a looping replay; beyond it, read again
GOOD = "good"


@dataclass(slots=True)
class _Entry:
    """One file of the replay. `bad`, `pixels` and `truth` are filled when its turn first comes."""

    path: Path
    name: str  # relative to the folder, POSIX: the verdict's source_name
    height: int  # from the header (0 when the header is unreadable)
    width: int
    bad: str | None  # why it cannot be replayed, file name first; None = fine so far
    pixels: np.ndarray | None = None  # decoded, in the ring's pixel format; None until read (or not cached)
    truth: GroundTruth | None = None
    truth_read: bool = False


def find_images(root: Path, pattern: str) -> list[Path]:
    """Replayable images below root matching pattern, in sorted order, mask files left out."""
    files = [p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    not_png = {(p.parent, p.stem) for p in files if p.suffix.lower() != ".png"}

    def is_mask(p: Path) -> bool:
        beside_an_image = p.suffix.lower() == ".png" and (p.parent, p.stem) in not_png
        return beside_an_image or "masks" in p.relative_to(root).parts[:-1]

    return sorted(p for p in files if not is_mask(p))


def mask_threshold(mask: Path) -> int:
    """Mask values >= this are defect pixels: Magnetic Tile's rule inside MT_<class>/Imgs/, non-zero elsewhere
    (inspector.train.datasets.layout_mask_threshold; tests/test_sources.py checks the two agree)."""
    in_mt = mask.parent.name == "Imgs" and mask.parent.parent.name.startswith("MT_")
    return MT_MASK_THRESHOLD if in_mt else 1


def _mask_for(root: Path, image: Path) -> Path | None:
    if image.suffix.lower() != ".png":
        beside = image.with_suffix(".png")
        if beside.is_file():
            return beside
    rel = image.relative_to(root)
    candidates = []
    if "images" in rel.parts[:-1]:
        i = rel.parts.index("images")
        candidates.append(root.joinpath(*rel.parts[:i], "masks", *rel.parts[i + 1 :]).with_suffix(".png"))
    candidates.append(root / "masks" / f"{image.stem}.png")
    return next((c for c in candidates if c.is_file()), None)


def _read_classes(root: Path) -> dict[str, str]:
    """classes.csv: name -> class, the name as written and its stem (training matches both)."""
    path = root / "classes.csv"
    if not path.is_file():
        return {}
    table = {}
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and not row[0].startswith("#"):
                name, cls = row[0].strip(), row[1].strip()
                table[name] = cls
                table[Path(name).stem] = cls
    if table.get("name", "").lower() == "class":  # header row
        del table["name"]
    return table


def _class_of(root: Path, image: Path, classes: dict[str, str]) -> str | None:
    rel = image.relative_to(root)
    for key in (rel.as_posix(), image.name, image.stem):
        if key in classes:
            return classes[key]
    parts = rel.parts[:-1]
    if "images" in parts and parts.index("images") < len(parts) - 1:  # images/<class>/NAME
        return parts[parts.index("images") + 1]
    for parent in image.parents:
        if parent.name.startswith("MT_"):
            name = parent.name[3:].lower()
            return GOOD if name == "free" else name
    return None


def to_pixel_format(raw: np.ndarray, pixel_format: str) -> np.ndarray | str:
    """A decoded image (cv2.IMREAD_UNCHANGED: grey, BGR or BGRA) -> (H, W, C) uint8 in `pixel_format`, or why not."""
    if raw.dtype == np.uint16:  # 16-bit cameras: the top 8 bits, as training reads them
        raw = (raw >> 8).astype(np.uint8)
    if raw.dtype != np.uint8:
        return f"{raw.dtype} pixels, the line is configured for 8-bit {pixel_format}"
    if raw.ndim == 3 and raw.shape[2] == 4:
        raw = raw[:, :, :3]  # alpha carries nothing the camera would see
    elif raw.ndim == 3 and raw.shape[2] == 2:
        raw = raw[:, :, 0]  # grey + alpha
    if raw.ndim == 2 or raw.shape[2] == 1:
        gray = raw if raw.ndim == 2 else raw[:, :, 0]
        return gray[:, :, None] if pixel_format == "mono8" else cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    if pixel_format == "mono8":  # cv2 reads colour as BGR
        return cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)[:, :, None]
    if pixel_format == "rgb8":
        return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    return raw


class FolderSource:
    def __init__(self, cfg: FolderSourceConfig, events: SourceEvents):
        self.cfg = cfg
        self.events = events
        self.shape = (cfg.height, cfg.width, CHANNELS[cfg.pixel_format])
        self._entries: list[_Entry] = []
        self._classes: dict[str, str] = {}
        self._open = False
        self._cached_bytes = 0
        self._cache_full_logged = False
        self._pacer = Pacer(cfg.rate_hz)
        self._position = 0  # next entry to show
        self._next_id = 0

    @property
    def entries(self) -> list[_Entry]:
        return self._entries

    def open(self) -> None:
        cfg = self.cfg
        root = Path(cfg.path)
        if not root.is_dir():
            raise SourceError(f"source.path: folder not found: {root}")
        files = find_images(root, cfg.pattern)
        if not files:
            raise SourceError(
                f"source.path: no images ({', '.join(IMAGE_EXTENSIONS)}) in {root} matching {cfg.pattern!r}"
            )
        t0 = time.perf_counter()
        self._classes = _read_classes(root) if cfg.masks else {}
        self._entries = [self._header(root, path) for path in files]
        self._cached_bytes = 0
        self._open = True
        if cfg.preload:
            for entry in self._entries:
                self._load(entry)
                self._truth(entry)
        bad = [e for e in self._entries if e.bad is not None]
        log.info(
            "folder replay: %d images in %s, %s in %.1f s",
            len(self._entries),
            root,
            "decoded (preload)" if cfg.preload else "headers read (images decoded in their turn)",
            time.perf_counter() - t0,
        )
        if bad:
            log.warning("folder replay: %d images will be delivered as bad frames, e.g. %s", len(bad), bad[0].bad)

    def _header(self, root: Path, path: Path) -> _Entry:
        """The entry of one file, from its header alone: a bad frame already when it cannot be replayed."""
        name = path.relative_to(root).as_posix()
        try:
            width, height = image_size(path)
        except (HeaderError, OSError) as exc:
            return _Entry(path, name, 0, 0, f"{path.name}: {exc}")
        slot_h, slot_w = self.shape[:2]
        if height > slot_h or width > slot_w:
            why = (
                f"image is {width}x{height}, larger than the {slot_w}x{slot_h} ring slot (source.width x "
                "source.height); a replay delivers images at their native size, never resized by the source"
            )
            return _Entry(path, name, height, width, f"{path.name}: {why}")
        return _Entry(path, name, height, width, None)

    def _load(self, entry: _Entry) -> np.ndarray | None:
        """The entry's pixels, decoded now unless cached; None when it turns out to be a bad frame."""
        if entry.pixels is not None or entry.bad is not None:
            return entry.pixels
        try:
            raw = cv2.imread(str(entry.path), cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:
            raw, why = None, f"decoder error: {' '.join(str(exc).split())[:200]}"
        else:
            why = "unreadable image data (the decoder failed)"
        image = None if raw is None else to_pixel_format(raw, self.cfg.pixel_format)
        if isinstance(image, str):
            why, image = image, None
        elif image is not None and image.shape[:2] != (entry.height, entry.width):
            why = f"decoded {image.shape[1]}x{image.shape[0]}, its header says {entry.width}x{entry.height}"
            image = None
        if image is None:
            entry.bad = f"{entry.path.name}: {why}"
            return None
        if self._cached_bytes + image.nbytes <= CACHE_BYTES:
            entry.pixels = image
            self._cached_bytes += image.nbytes
        elif not self._cache_full_logged:
            self._cache_full_logged = True
            log.warning(
                "folder replay: %.1f GiB of decoded images kept in memory; the rest is read from disk every pass",
                self._cached_bytes / 2**30,
            )
        return image

    def _truth(self, entry: _Entry) -> GroundTruth | None:
        if not self.cfg.masks:
            return None
        if not entry.truth_read:
            entry.truth = self._read_truth(Path(self.cfg.path), entry.path)
            entry.truth_read = True
        return entry.truth

    def _read_truth(self, root: Path, image: Path) -> GroundTruth | None:
        cls = _class_of(root, image, self._classes)
        mask_path = _mask_for(root, image)
        if mask_path is None:  # no mask: the class says, and no class means defect-free (as in training)
            defective = cls not in (None, GOOD)
            return GroundTruth(defective=defective, defect_area_px=0, kind=cls if defective else None)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            log.warning("folder replay: cannot read mask %s; %s has no ground truth", mask_path, image.name)
            return None
        if mask.ndim == 3:  # a colour-saved mask: any channel marks the defect
            mask = mask.max(axis=2)
        # The area is counted at the image's native resolution, the frame the daemon sees.
        hit = mask > 0 if mask.dtype != np.uint8 else mask >= mask_threshold(mask_path)
        area = int(np.count_nonzero(hit))
        defective = area > 0 if cls is None else cls != GOOD
        kind = cls if defective and cls not in (None, GOOD) else None
        return GroundTruth(defective=defective, defect_area_px=area, kind=kind)

    def start(self) -> None:
        if not self._open:
            raise SourceError("folder source: start() before open()")
        self._pacer.start(self._next_id)
        self.events.camera_state(True, f"folder replay of {len(self._entries)} images from {self.cfg.path}")

    def grab(self, out: np.ndarray, timeout_s: float) -> Grab | None:
        if not self._open:
            raise SourceError("folder source: grab() on a closed source")
        if out.shape != self.shape:
            raise SourceError(f"folder source: slot is {out.shape}, the source delivers {self.shape}")
        entries = self._entries
        if self._position >= len(entries):
            if not self.cfg.loop:
                raise EndOfStream(f"{len(entries)} images replayed")
            self._position = 0
        self._load(entries[self._position])  # decoded before the frame is due, not after
        paced = self._pacer.wait(timeout_s)
        if paced is None:
            return None
        frame_id, lost = paced
        self._next_id = frame_id + 1
        # Frames the simulated camera lost are images the line never showed: skip them in the replay too.
        self._position += lost
        if self._position >= len(entries):
            if not self.cfg.loop:
                raise EndOfStream(f"{len(entries)} images replayed (the last ones lost by the consumer)")
            self._position %= len(entries)
        entry = entries[self._position]
        self._position += 1
        pixels = self._load(entry)
        if pixels is not None:
            h, w = pixels.shape[:2]
            np.copyto(out[:h, :w], pixels)
        return Grab(
            camera_frame_id=frame_id,
            height=entry.height,
            width=entry.width,
            truth=self._truth(entry),
            bad_frame=entry.bad,
            camera_drops_before=lost,
            source_name=entry.name,
        )

    def stop(self) -> None:
        """Nothing runs between grabs: stopping only means no grab() follows until start()."""

    def close(self) -> None:
        self._open = False
        self._entries = []
        self._cached_bytes = 0
