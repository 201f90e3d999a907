"""Issue 10 on the real daemon: files a replay cannot show are `bad_frame` verdicts, one each, never a crash at
start-up or during the run, and the other images pass through normally. Real files (a PNG whose header claims
60000 x 60000 pixels, with valid CRCs; a truncated JPEG; an empty file; text named .png), real tiny ONNX
models, a real SUB socket."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_helpers import free_port, run_to_end, write_config
from tiny_models import write_tiny_models

from inspector.preprocess import describe_fit
from inspector.sources.image_header import HeaderError, image_size

pytestmark = pytest.mark.timeout(120)

SLOT = 64


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """A well-formed PNG (valid CRCs, a real deflate stream) whose IHDR claims width x height 8-bit grey pixels:
    3.6 GB for a decoder that believes it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)  # the first rows, then the stream simply ends
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def _write(folder: Path) -> None:
    folder.mkdir()
    part = np.full((SLOT, SLOT), 60, np.uint8)
    spot = part.copy()
    cv2.circle(spot, (32, 32), 6, 250, -1)
    cv2.imwrite(str(folder / "a_good.png"), part)
    (folder / "b_bomb.png").write_bytes(bomb_png())
    ok, jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (SLOT, SLOT), dtype=np.uint8))
    assert ok
    (folder / "c_truncated.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    (folder / "d_empty.png").write_bytes(b"")
    (folder / "e_text.png").write_text("this is not an image\n")
    cv2.imwrite(str(folder / "f_spot.png"), spot)
    cv2.imwrite(str(folder / "g_small.png"), part[:40, :48])


def test_bomb_header_is_read_not_decoded(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    assert image_size(path) == (60000, 60000)
    assert path.stat().st_size < 1000
    (tmp_path / "t.png").write_bytes(bomb_png()[:-12])  # without IEND
    with pytest.raises(HeaderError, match="truncated"):
        image_size(tmp_path / "t.png")


def test_each_unreplayable_file_gets_one_bad_frame_verdict_and_the_rest_are_inspected(tmp_path):
    folder = tmp_path / "images"
    _write(folder)
    port = free_port()
    source = f"  kind: folder\n  path: {folder}\n  width: {SLOT}\n  height: {SLOT}\n  loop: false\n  masks: false"
    models = write_tiny_models(tmp_path / "models", size=SLOT)
    config = write_config(tmp_path / "line.yaml", models, source=source, port=port)
    verdicts = run_to_end(config, port)
    assert [v["seq"] for v in verdicts] == list(range(7))  # exactly one verdict per file, in order
    by_name = {v["source_name"]: v for v in verdicts}
    assert sorted(by_name) == sorted(p.name for p in folder.iterdir())
    expected = {
        "b_bomb.png": "larger than the 64x64 ring slot",
        "c_truncated.jpg": "truncated",
        "d_empty.png": "empty file",
        "e_text.png": "not a PNG, JPEG, BMP or TIFF",
    }
    for name, why in expected.items():
        v = by_name[name]
        assert (v["reason"], v["result"], v["inspected"]) == ("bad_frame", "reject", False), v
        assert v["detail"].startswith(f"{name}: ") and why in v["detail"], v["detail"]
    assert "60000x60000" in by_name["b_bomb.png"]["detail"]
    assert (by_name["a_good.png"]["result"], by_name["a_good.png"]["reason"]) == ("pass", "ok")
    assert (by_name["f_spot.png"]["result"], by_name["f_spot.png"]["reason"]) == ("reject", "defect")
    assert (by_name["g_small.png"]["result"], by_name["g_small.png"]["reason"]) == ("pass", "ok")


def test_aspect_ratio_changes_and_extra_shrinks_are_named():
    """What the daemon logs per model at start-up (a warning when the frame's shape is not kept as trained)."""
    text, changed = describe_fit((404, 640), "squash", None, (224, 224))
    assert changed and "640x404" in text and "aspect ratio stretched by 0.631" in text
    assert describe_fit((320, 320), "squash", None, (224, 224))[1] is False
    text, changed = describe_fit((404, 640), "place", 1.0, (320, 320))
    assert changed and "shrunk to 320x202 (scale 0.5, aspect ratio kept)" in text
    assert describe_fit((96, 64), "place", 1.0, (128, 128)) == (
        "placed: a 64x96 frame becomes 64x96 at the input's top-left (scale 1)",
        False,
    )


@pytest.mark.parametrize("ext", ["png", "jpg", "jpeg", "bmp", "tif", "tiff"])
@pytest.mark.parametrize("channels", [1, 3])
def test_header_sizes_equal_what_opencv_decodes(tmp_path, ext, channels):
    rng = np.random.default_rng(channels)
    image = rng.integers(0, 255, (37, 53, channels), dtype=np.uint8)
    path = tmp_path / f"x.{ext}"
    assert cv2.imwrite(str(path), image if channels == 3 else image[:, :, 0])
    assert image_size(path) == (53, 37)
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert decoded.shape[:2] == (37, 53)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "empty file"),
        (b"GIF89a" + bytes(40), "unrecognised header"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated"),
        (b"\xff\xd8\xff\xe0\x00\x04ab\x00\x00", "broken segment"),
        (b"\x89PNG\r\n\x1a\n" + bytes(30), "IHDR"),
    ],
)
def test_broken_headers_say_why(tmp_path, content, why):
    path = tmp_path / "x.img"
    path.write_bytes(content)
    with pytest.raises(HeaderError, match=why):
        image_size(path)
