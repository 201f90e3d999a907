"""Folder replay: images from a directory, preloaded into memory, shown as a camera would (for benchmarks,
regression runs on recorded parts, and demos on a real data set).

Every image is read, converted to the configured pixel format and (with `resize`) scaled to width x height at
open(), into one contiguous array, so grab() costs one copy into the ring slot and no disk I/O: the replay
measures the pipeline, not the file system.

Nothing is skipped silently. An image that cannot be replayed as configured (unreadable, not 8-bit, the wrong
size with `resize: false`) is still delivered in its turn, as a Grab with `bad_frame` saying why; the slot is
not written, and the pipeline rejects the frame with reason bad_frame.

Mask files are not frames: a PNG beside a same-named image of another extension (Magnetic Tile's
NAME.jpg + NAME.png) and anything under a `masks/` folder (the generic layout) are left out of the replay and,
with `masks: true`, read as that image's ground truth (pixel >= 128 = defect, as training reads them). The
defect class comes from `classes.csv` at the folder's root (generic layout) or from an `MT_<Class>` folder
(Magnetic Tile); `good` / `MT_Free` means defect-free.

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
from inspector.sources.pacing import Pacer

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_THRESHOLD = 128  # the training readers' rule (anti-aliased masks: >= 128 is defect)
MAX_PRELOAD_BYTES = 8 << 30
GOOD = "good"


@dataclass(frozen=True)
class _Entry:
    path: Path
    index: int  # row in the preloaded array, or -1 for a bad frame
    height: int
    width: int
    truth: GroundTruth | None
    bad: str | None


def find_images(root: Path, pattern: str) -> list[Path]:
    """Replayable images below root matching pattern, in sorted order, mask files left out."""
    files = [p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    not_png = {(p.parent, p.stem) for p in files if p.suffix.lower() != ".png"}

    def is_mask(p: Path) -> bool:
        beside_an_image = p.suffix.lower() == ".png" and (p.parent, p.stem) in not_png
        return beside_an_image or "masks" in p.relative_to(root).parts[:-1]

    return sorted(p for p in files if not is_mask(p))


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
    path = root / "classes.csv"
    if not path.is_file():
        return {}
    table = {}
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and not row[0].startswith("#"):
                table[Path(row[0].strip()).stem] = row[1].strip()
    table.pop("name", None)  # header row
    return table


def _class_of(image: Path, classes: dict[str, str]) -> str | None:
    if image.stem in classes:
        return classes[image.stem]
    for parent in image.parents:
        if parent.name.startswith("MT_"):
            name = parent.name[3:].lower()
            return GOOD if name == "free" else name
    return None


class FolderSource:
    def __init__(self, cfg: FolderSourceConfig, events: SourceEvents):
        self.cfg = cfg
        self.events = events
        self.shape = (cfg.height, cfg.width, CHANNELS[cfg.pixel_format])
        self._pool: np.ndarray | None = None
        self._entries: list[_Entry] = []
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
        frame_bytes = int(np.prod(self.shape))
        if len(files) * frame_bytes > MAX_PRELOAD_BYTES:
            raise SourceError(
                f"source.path: {len(files)} images at {cfg.width}x{cfg.height} need "
                f"{len(files) * frame_bytes / 2**30:.1f} GiB preloaded; select fewer with source.pattern"
            )
        t0 = time.perf_counter()
        classes = _read_classes(root) if cfg.masks else {}
        pool = np.empty((len(files), *self.shape), np.uint8)
        entries = []
        used = 0
        for path in files:
            image, bad = self._load(path)
            height, width = image.shape[:2] if image is not None else (0, 0)
            truth = self._truth(root, path, classes) if cfg.masks else None
            if bad is None:
                assert image is not None
                pool[used] = image
                entries.append(_Entry(path, used, height, width, truth, None))
                used += 1
            else:
                entries.append(_Entry(path, -1, height, width, truth, f"{path.name}: {bad}"))
        self._pool = pool[:used]  # a view: bad frames hold no pixels
        self._entries = entries
        bad_count = len(entries) - used
        log.info(
            "folder replay: %d images from %s preloaded in %.1f s (%d bad frames, %d with ground truth)",
            len(entries),
            root,
            time.perf_counter() - t0,
            bad_count,
            sum(e.truth is not None for e in entries),
        )
        if bad_count:
            log.warning(
                "folder replay: %d images will be delivered as bad frames, e.g. %s",
                bad_count,
                next(e.bad for e in entries if e.bad),
            )

    def _load(self, path: Path) -> tuple[np.ndarray | None, str | None]:
        """-> (image in the ring's format and size, None) or (what was read or None, why it is a bad frame)."""
        cfg = self.cfg
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            return None, "unreadable image file"
        if raw.dtype != np.uint8:
            return raw, f"{raw.dtype} pixels, the line is configured for 8-bit {cfg.pixel_format}"
        if raw.ndim == 3 and raw.shape[2] == 4:
            raw = raw[:, :, :3]  # alpha carries nothing the camera would see
        elif raw.ndim == 3 and raw.shape[2] == 2:
            raw = raw[:, :, 0]  # grey + alpha
        if raw.ndim == 2 or raw.shape[2] == 1:
            gray = raw if raw.ndim == 2 else raw[:, :, 0]
            image = gray[:, :, None] if cfg.pixel_format == "mono8" else cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
        else:  # cv2 reads colour as BGR
            if cfg.pixel_format == "mono8":
                image = cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)[:, :, None]
            elif cfg.pixel_format == "rgb8":
                image = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
            else:
                image = raw
        h, w = image.shape[:2]
        if (h, w) != (cfg.height, cfg.width):
            if not cfg.resize:
                return image, f"image is {w}x{h}, the source delivers {cfg.width}x{cfg.height} (resize is off)"
            shrink = h > cfg.height or w > cfg.width
            resized = cv2.resize(
                image, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            )
            image = resized.reshape(self.shape)  # cv2 drops a single channel axis
        return image, None

    def _truth(self, root: Path, image: Path, classes: dict[str, str]) -> GroundTruth | None:
        cls = _class_of(image, classes)
        mask_path = _mask_for(root, image)
        if mask_path is None:
            if cls is None:
                return None  # nothing known about this image
            return GroundTruth(defective=cls != GOOD, defect_area_px=0, kind=None if cls == GOOD else cls)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            log.warning("folder replay: cannot read mask %s; %s has no ground truth", mask_path, image.name)
            return None
        if mask.shape != (self.cfg.height, self.cfg.width):
            # Nearest neighbour keeps the mask binary; the area is counted at the resolution the daemon sees.
            mask = cv2.resize(mask, (self.cfg.width, self.cfg.height), interpolation=cv2.INTER_NEAREST)
        area = int(np.count_nonzero(mask >= MASK_THRESHOLD))
        defective = area > 0 if cls is None else cls != GOOD
        kind = cls if defective and cls not in (None, GOOD) else None
        return GroundTruth(defective=defective, defect_area_px=area, kind=kind)

    def start(self) -> None:
        if self._pool is None:
            raise SourceError("folder source: start() before open()")
        self._pacer.start(self._next_id)
        self.events.camera_state(True, f"folder replay of {len(self._entries)} images from {self.cfg.path}")

    def grab(self, out: np.ndarray, timeout_s: float) -> Grab | None:
        pool = self._pool
        if pool is None:
            raise SourceError("folder source: grab() on a closed source")
        if out.shape != self.shape:
            raise SourceError(f"folder source: slot is {out.shape}, the source delivers {self.shape}")
        if self._position >= len(self._entries):
            if not self.cfg.loop:
                raise EndOfStream(f"{len(self._entries)} images replayed")
            self._position = 0
        paced = self._pacer.wait(timeout_s)
        if paced is None:
            return None
        frame_id, lost = paced
        self._next_id = frame_id + 1
        # Frames the simulated camera lost are images the line never showed: skip them in the replay too.
        self._position += lost
        if self._position >= len(self._entries):
            if not self.cfg.loop:
                raise EndOfStream(f"{len(self._entries)} images replayed (the last ones lost by the consumer)")
            self._position %= len(self._entries)
        entry = self._entries[self._position]
        self._position += 1
        if entry.bad is None:
            np.copyto(out, pool[entry.index])
        return Grab(
            camera_frame_id=frame_id,
            height=entry.height,
            width=entry.width,
            truth=entry.truth,
            bad_frame=entry.bad,
            camera_drops_before=lost,
        )

    def stop(self) -> None:
        """Nothing runs between grabs: stopping only means no grab() follows until start()."""

    def close(self) -> None:
        self._pool = None
        self._entries = []
