"""`inspector-train import-archive`: reviewed frames of a line's archive -> the generic training layout.

    inspector-train import-archive --archive /var/lib/inspector/archive/line1-cam1 --out data/line1-reviewed

Every frame a reviewer marked in `inspector review` becomes a training image (the archived frame, lossless, as
the networks saw it), so the next model learns from the line's own mistakes:

- judged good (a false reject, or a pass marked correct): ``images/ID.png``, class ``good``, no mask;
- judged defective (a reject marked correct, or a missed defect): ``images/ID.png``, the class the reviewer
  chose, and ``masks/ID.png`` (non-zero = defect, the frame's size) from the reviewer's painting, or from the
  segmenter's defect pixels at the thresholds the frame was decided with when the reviewer accepted them. A
  defective frame without a pixel label is kept as an image-level label (inspector.train.datasets counts it,
  and training leaves it out of pixel supervision).

``classes.csv`` (name,class) lists every imported image. Importing again (after more review) updates the same
folder: new marks are added, changed marks rewrite their files, nothing else is touched. The result is read
by `inspector.train.datasets.load_dataset`, so `inspector-train train --data OUT` takes it as it is.

Deliberately free of torch: it runs on the line's box, next to the archive. Where the `train` extra is not
installed (`inspector-train` needs torch to start), the same command runs as
``python -m inspector.train.import_archive --archive DIR --out DATA``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from inspector.archive import layout
from inspector.archive.layout import ArchiveFormatError
from inspector.archive.marks import MarkStore
from inspector.archive.reader import ArchiveReader, RecordGone
from inspector.archive.redecide import Redecider

GOOD = "good"  # inspector.train.datasets.GOOD (not imported: that module stays this one's reader, not its dependency)


@dataclass
class ImportSummary:
    images: int = 0
    good: int = 0
    defective: int = 0
    with_mask: int = 0
    without_pixel_labels: int = 0
    gone: list[str] = field(default_factory=list)  # marked, but the record is no longer in the archive
    by_class: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"{self.images} images: {self.good} good, {self.defective} defective "
            f"({self.with_mask} with a mask, {self.without_pixel_labels} image-level only)"
        ]
        if self.by_class:
            out.append("  " + ", ".join(f"{c} {n}" for c, n in sorted(self.by_class.items())))
        if self.gone:
            out.append(f"  {len(self.gone)} marked frames are no longer in the archive and were skipped")
        return out


def _png(mask: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise ValueError("PNG encoding failed")
    return png.tobytes()


def _read_classes(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    table = {}
    with path.open(newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if len(row) < 2 or row[0].startswith("#") or (i == 0 and row[0] == "name"):
                continue
            table[row[0].strip()] = row[1].strip()
    return table


def import_archive(archive: Path, out: Path) -> ImportSummary:
    reader = ArchiveReader(archive)
    store = MarkStore(archive)
    marks = store.all()
    own = Redecider(reader)  # the segmenter's mask at the thresholds each frame was decided with
    images, masks = out / "images", out / "masks"
    for d in (out, images, masks):
        d.mkdir(parents=True, exist_ok=True)
    classes = _read_classes(out / "classes.csv")
    summary = ImportSummary()
    for rid, mark in sorted(marks.items()):
        try:
            record = reader.open(rid)
        except RecordGone:
            summary.gone.append(rid)
            continue
        name = f"{rid}.png"
        layout.atomic_write(images / name, record.image_png(), mode=0o644)
        mask_file = masks / name
        summary.images += 1
        if mark.truth == GOOD:
            classes[name] = GOOD
            mask_file.unlink(missing_ok=True)
            summary.good += 1
            continue
        cls = mark.cls or "defect"
        classes[name] = cls
        summary.defective += 1
        summary.by_class[cls] = summary.by_class.get(cls, 0) + 1
        mask: np.ndarray | None = None
        if mark.mask == "reviewer":
            painted = cv2.imread(str(store.mask_path(rid)), cv2.IMREAD_GRAYSCALE)
            mask = None if painted is None else painted > 0
        elif mark.mask == "segmenter":
            pixels = record.pixel_scores()
            if pixels is not None:
                hit = own.decider(record).defect_pixels(pixels)
                h, w = record.frame_size
                mask = cv2.resize(hit.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        if mask is not None and mask.any():
            layout.atomic_write(mask_file, _png(mask), mode=0o644)
            summary.with_mask += 1
        else:
            mask_file.unlink(missing_ok=True)
            summary.without_pixel_labels += 1
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\n")
    rows.writerow(["name", "class"])
    for name in sorted(classes):
        rows.writerow([name, classes[name]])
    layout.atomic_write(out / "classes.csv", text.getvalue().encode(), mode=0o644)
    return summary


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "import-archive",
        help="turn reviewed frames of a line's archive into a training data set (generic layout)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _arguments(p)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archive", required=True, type=Path, help="archive directory (the line's archive.path)")
    p.add_argument("--out", required=True, type=Path, help="data set folder to create or update")
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    try:
        summary = import_archive(args.archive, args.out)
    except (FileNotFoundError, ArchiveFormatError) as exc:
        print(f"import-archive: {exc}", file=sys.stderr)
        return 2
    if summary.images == 0:
        print(f"import-archive: no reviewed frames in {args.archive} (mark some with `inspector review`)")
        return 1
    for line in summary.lines():
        print(line)
    print(f"data set: {args.out} (inspector-train train --data {args.out} ...)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inspector.train.import_archive",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
