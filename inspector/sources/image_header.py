"""An image file's size from its header, read before a single pixel is decoded.

A decoder allocates what the header claims: a 60 KB PNG whose IHDR says 60000 x 60000 asks for 3.6 GB (a
decompression bomb), and OpenCV's imread gives no way to look at the size first. So the folder replay reads the
header itself, refuses what does not fit before decoding, and lets OpenCV decode only what does. The formats
are the ones the replay accepts (PNG, JPEG, BMP, TIFF), recognised by their signature, not their file name;
anything else is refused with the reason, never guessed at.

Truncation. A JPEG cut short still decodes (libjpeg fills the missing rows with grey and only warns), so a JPEG
must end with its end-of-image marker and a PNG with its IEND chunk; a file that does not is truncated.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

HEAD_BYTES = 64  # enough for every signature and the PNG/BMP size fields
TAIL_BYTES = 4096  # where a JPEG's end-of-image marker or a PNG's IEND chunk must be
JPEG_SEGMENT_LIMIT = 10_000  # markers looked at before the frame header: a bounded walk, even on garbage
TIFF_SIZE_TAGS = {256: "width", 257: "height"}  # ImageWidth, ImageLength

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8 and CC are not frames.
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class HeaderError(ValueError):
    """The file is not an image this reader understands, or its header is broken; the message says which."""


def image_size(path: Path) -> tuple[int, int]:
    """-> (width, height) from the header of a PNG, JPEG, BMP or TIFF file. Raises HeaderError, OSError."""
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
        if not head:
            raise HeaderError("empty file")
        if head.startswith(PNG_SIGNATURE):
            size = _png(head)
            _check_tail(f, b"IEND\xaeB`\x82", "PNG without its IEND chunk")
        elif head.startswith(b"\xff\xd8\xff"):
            size = _jpeg(f)
            _check_tail(f, b"\xff\xd9", "JPEG without its end-of-image marker")
        elif head.startswith(b"BM"):
            size = _bmp(head)
        elif head[:4] in (b"II*\x00", b"MM\x00*"):
            size = _tiff(f, head)
        else:
            raise HeaderError("not a PNG, JPEG, BMP or TIFF image (unrecognised header)")
    width, height = size
    if width <= 0 or height <= 0:
        raise HeaderError(f"header claims a {width}x{height} image")
    return width, height


def _check_tail(f: BinaryIO, marker: bytes, what: str) -> None:
    f.seek(0, 2)
    end = f.tell()
    f.seek(max(0, end - TAIL_BYTES))
    # Some writers pad the file after the end marker; padding is not truncation.
    tail = f.read().rstrip(b"\x00")
    if not tail.endswith(marker):
        raise HeaderError(f"truncated file ({what})")


def _png(head: bytes) -> tuple[int, int]:
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise HeaderError("PNG without an IHDR chunk")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def _jpeg(f: BinaryIO) -> tuple[int, int]:
    f.seek(2)
    for _ in range(JPEG_SEGMENT_LIMIT):
        byte = f.read(1)
        if not byte:
            break
        if byte != b"\xff":
            raise HeaderError("JPEG with a broken segment (no marker where one must be)")
        while byte == b"\xff":  # the marker's 0xFF and any fill bytes before its code
            byte = f.read(1)
        if not byte:
            break
        marker = byte[0]
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            continue
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            break
        (length,) = struct.unpack(">H", length_bytes)
        if length < 2:
            raise HeaderError("JPEG with a broken segment length")
        if marker in JPEG_SOF:
            frame = f.read(5)
            if len(frame) < 5:
                break
            height, width = struct.unpack(">HH", frame[1:5])
            return int(width), int(height)
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            raise HeaderError("JPEG without a frame header")
        f.seek(length - 2, 1)
    raise HeaderError("truncated file (JPEG ends before its frame header)")


def _bmp(head: bytes) -> tuple[int, int]:
    if len(head) < 26:
        raise HeaderError("truncated file (BMP header)")
    (dib,) = struct.unpack("<I", head[14:18])
    if dib == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", head[18:22])
        return int(width), int(height)
    width, height = struct.unpack("<ii", head[18:26])
    return int(width), abs(int(height))  # a negative height means top-down rows


def _tiff(f: BinaryIO, head: bytes) -> tuple[int, int]:
    order = "<" if head[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", head[4:8])
    f.seek(ifd)
    count_bytes = f.read(2)
    if len(count_bytes) < 2:
        raise HeaderError("truncated file (TIFF directory)")
    (count,) = struct.unpack(order + "H", count_bytes)
    found: dict[str, int] = {}
    for _ in range(count):
        entry = f.read(12)
        if len(entry) < 12:
            raise HeaderError("truncated file (TIFF directory)")
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in TIFF_SIZE_TAGS:
            # SHORT (3) or LONG (4), stored in the entry's value field.
            value = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
            found[TIFF_SIZE_TAGS[tag]] = int(value)
    if len(found) < 2:
        raise HeaderError("TIFF without its image width and length")
    return found["width"], found["height"]
