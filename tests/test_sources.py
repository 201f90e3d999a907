"""Synthetic and folder sources against the Source protocol: size/format, pacing, ground truth, bad frames."""

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.config import FolderSourceConfig, SyntheticSourceConfig
from inspector.sources import EndOfStream, SourceError, pacing, source_class
from inspector.sources.folder import FolderSource, mask_threshold
from inspector.sources.pacing import Pacer
from inspector.sources.synthetic import SyntheticSource
from inspector.synth import write_dataset
from inspector.train.datasets import layout_mask_threshold, read_mask, scan_folder

MAGNETIC_TILE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "magnetic-tile"


class Events:
    def __init__(self):
        self.states = []

    def camera_state(self, connected: bool, detail: str) -> None:
        self.states.append((connected, detail))


def _synthetic(**over):
    base = dict(kind="synthetic", width=96, height=64, rate_hz=None, pool_size=6, seed=3)
    base.update(over)
    src = SyntheticSource(SyntheticSourceConfig(**base), Events())
    src.open()
    src.start()
    return src


def _grab_all(src, n, shape):
    out = np.zeros(shape, np.uint8)
    grabs, frames = [], []
    for _ in range(n):
        g = src.grab(out, 1.0)
        assert g is not None
        grabs.append(g)
        frames.append(out.copy())
    return grabs, frames


def test_registry_points_at_these_classes():
    assert source_class("synthetic") is SyntheticSource
    assert source_class("folder") is FolderSource


@pytest.mark.parametrize(("pixel_format", "channels"), [("mono8", 1), ("rgb8", 3), ("bgr8", 3)])
def test_synthetic_delivers_the_configured_size_and_format(pixel_format, channels):
    src = _synthetic(pixel_format=pixel_format)
    grabs, frames = _grab_all(src, 8, (64, 96, channels))
    assert [g.camera_frame_id for g in grabs] == list(range(8))
    assert all((g.height, g.width) == (64, 96) and g.truth is not None for g in grabs)
    np.testing.assert_array_equal(frames[0], frames[6])  # a pool of 6 parts, cycled
    assert not np.array_equal(frames[0], frames[1])
    assert src.events.states and src.events.states[0][0] is True
    if pixel_format == "bgr8":
        rgb = _grab_all(_synthetic(pixel_format="rgb8"), 1, (64, 96, 3))[1][0]
        np.testing.assert_array_equal(frames[0], rgb[:, :, ::-1])
    with pytest.raises(SourceError, match="slot"):
        src.grab(np.zeros((64, 96, 4 - channels), np.uint8), 0.1)


def test_synthetic_ground_truth_follows_the_config_and_the_seed():
    src = _synthetic(pool_size=40, defect_probability=1.0, small_defect_fraction=1.0, defect_kinds=["crack"])
    grabs, _ = _grab_all(src, 40, (64, 96, 1))
    assert all(g.truth.defective and g.truth.kind == "crack" and 0 < g.truth.defect_area_px < 100 for g in grabs)
    a, frames_a = _grab_all(_synthetic(seed=9), 3, (64, 96, 1))
    b, frames_b = _grab_all(_synthetic(seed=9), 3, (64, 96, 1))
    assert [g.truth for g in a] == [g.truth for g in b]
    np.testing.assert_array_equal(np.stack(frames_a), np.stack(frames_b))
    good = _grab_all(_synthetic(defect_probability=0.0), 6, (64, 96, 1))[0]
    assert not any(g.truth.defective for g in good)


class VirtualClock:
    """Stands in for the `time` module of inspector.sources.pacing: monotonic_ns() reads a virtual clock that
    only sleep() (the pacer's own waits) and advance() (the consumer's) move. Pacing is then checked exactly,
    whatever else the machine runs: on a loaded one a real sleep overshoots by tens of milliseconds."""

    def __init__(self):
        self.ns = 10**12

    def monotonic_ns(self) -> int:
        return self.ns

    def sleep(self, seconds: float) -> None:
        self.ns += round(seconds * 1e9)

    advance = sleep


@pytest.fixture
def clock(monkeypatch):
    virtual = VirtualClock()
    monkeypatch.setattr(pacing, "time", virtual)
    return virtual


def test_synthetic_paces_at_rate_hz(clock):
    src = _synthetic(rate_hz=50.0)
    out = np.zeros((64, 96, 1), np.uint8)
    src.grab(out, 1.0)
    t0 = clock.ns
    grabs = [src.grab(out, 1.0) for _ in range(10)]
    assert clock.ns - t0 == 10 * 20_000_000  # 10 periods of 20 ms: neither faster nor slower
    assert [(g.camera_frame_id, g.camera_drops_before) for g in grabs] == [(i, 0) for i in range(1, 11)]


def test_a_grab_that_is_not_due_times_out(clock):
    src = _synthetic(rate_hz=0.5)
    out = np.zeros((64, 96, 1), np.uint8)
    assert src.grab(out, 1.0) is not None  # the first frame is due at once
    t0 = clock.ns
    assert src.grab(out, 0.05) is None
    assert clock.ns - t0 == 50_000_000  # it waited its timeout, not the 2 s until the next frame


def test_pacer_has_no_drift_and_a_late_consumer_loses_frames_like_a_camera(clock):
    pacer = Pacer(200.0, backlog=4)
    pacer.start(first_id=100)
    t0 = clock.ns
    delivered = []
    for i in range(20):
        frame_id, lost = pacer.wait(1.0)
        assert (frame_id, lost) == (100 + i, 0)
        delivered.append(clock.ns - t0)
        clock.advance(0.002 if i % 2 else 0.0)  # jitter shorter than a period is absorbed, not accumulated
    assert delivered == [i * 5_000_000 for i in range(20)]  # on the 5 ms grid: no drift
    clock.advance(0.1)  # 20 periods without fetching: the camera's 4 buffers overflow
    frame_id, lost = pacer.wait(1.0)
    assert (frame_id, lost) == (135, 15)  # 19 frames overdue, 4 of them still in the camera's buffers
    burst = [pacer.wait(0.0) for _ in range(4)]  # the buffered frames come at once, in order, none lost
    assert burst == [(frame_id + i, 0) for i in range(1, 5)]
    assert clock.ns - t0 == 19 * 5_000_000 + 2_000_000 + 100_000_000  # the burst did not wait


def test_synthetic_refuses_a_pool_that_does_not_fit():
    src = SyntheticSource(SyntheticSourceConfig(kind="synthetic", width=16384, height=16384, pool_size=64), Events())
    with pytest.raises(SourceError, match="pool_size"):
        src.open()


# ------------------------------------------------------------------------------------------ folder


def _folder(path, **over):
    base = dict(kind="folder", path=str(path), width=96, height=64, loop=False)
    base.update(over)
    src = FolderSource(FolderSourceConfig(**base), Events())
    src.open()
    src.start()
    return src


def _drain(src, shape):
    out = np.zeros(shape, np.uint8)
    grabs = []
    with pytest.raises(EndOfStream):
        for _ in range(1000):
            grabs.append(src.grab(out, 1.0))
    return grabs


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    root = tmp_path_factory.mktemp("generic")
    write_dataset(root, 8, seed=4, size=(64, 96), defect_probability=0.6)
    return root


def test_folder_replays_generic_layout_with_ground_truth_then_ends(generic):
    src = _folder(generic)
    grabs = _drain(src, (64, 96, 1))
    rows = dict(list(csv.reader((generic / "classes.csv").open()))[1:])
    assert len(grabs) == 8  # masks/ holds no frames
    assert [g.camera_frame_id for g in grabs] == list(range(8))
    for g, entry in zip(grabs, src.entries, strict=True):
        cls = rows[entry.path.name]
        assert g.bad_frame is None and g.truth is not None
        assert g.truth.defective == (cls != "good") and g.truth.kind == (None if cls == "good" else cls)
        if cls != "good":
            mask = cv2.imread(str(generic / "masks" / entry.path.name), cv2.IMREAD_GRAYSCALE)
            assert g.truth.defect_area_px == np.count_nonzero(mask)
    with pytest.raises(EndOfStream):  # stays ended
        src.grab(np.zeros((64, 96, 1), np.uint8), 0.1)


def test_folder_ground_truth_is_the_training_layouts(tmp_path):
    """Class and defect area as inspector.train.datasets reads them: no mask and no class = defect-free, an
    images/<class>/ folder names the class, any non-zero mask pixel is a defect outside Magnetic Tile."""
    root = tmp_path / "set"
    (root / "images" / "scratch").mkdir(parents=True)
    (root / "masks" / "scratch").mkdir(parents=True)
    part = np.full((48, 64), 90, np.uint8)
    cv2.imwrite(str(root / "images" / "plain.png"), part)  # no mask, no class
    cv2.imwrite(str(root / "images" / "listed.png"), part)  # classes.csv: pit, no mask
    cv2.imwrite(str(root / "images" / "scratch" / "s1.png"), part)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:14, 20:40] = 1  # a class-id mask: 1 is a defect pixel in the generic layout
    cv2.imwrite(str(root / "masks" / "scratch" / "s1.png"), mask)
    (root / "classes.csv").write_text("name,class\nlisted.png,pit\n")
    src = _folder(root, width=64, height=48)
    grabs = _drain(src, (48, 64, 1))
    truth = {g.source_name: g.truth for g in grabs}
    samples = {s.image.relative_to(root).as_posix(): s for s in scan_folder(root)}
    assert set(truth) == set(samples) == {"images/plain.png", "images/listed.png", "images/scratch/s1.png"}
    for name, t in truth.items():
        s = samples[name]
        assert (t.defective, t.defect_area_px) == (s.defective, s.defect_area_px), name
        assert t.kind == (s.cls if s.defective else None)
    assert truth["images/scratch/s1.png"].defect_area_px == 80
    for mask_file in (root / "masks" / "scratch" / "s1.png", MAGNETIC_TILE / "MT_Fray" / "Imgs" / "x.png"):
        assert mask_threshold(mask_file) == layout_mask_threshold(mask_file)


def test_folder_delivers_the_pixels_of_the_file(generic):
    src = _folder(generic, pixel_format="rgb8")
    out = np.zeros((64, 96, 3), np.uint8)
    src.grab(out, 1.0)
    gray = cv2.imread(str(src.entries[0].path), cv2.IMREAD_GRAYSCALE)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_folder_loops_with_frame_ids_continuing(generic):
    src = _folder(generic, loop=True, masks=False)
    out = np.zeros((64, 96, 1), np.uint8)
    first = src.grab(out, 1.0)
    copy = out.copy()
    for _ in range(7):
        src.grab(out, 1.0)
    again = src.grab(out, 1.0)
    assert (first.camera_frame_id, again.camera_frame_id) == (0, 8)
    np.testing.assert_array_equal(out, copy)
    assert first.truth is None  # masks: false


@pytest.fixture
def odd_folder(tmp_path):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "a_ok.png"), rng.integers(0, 255, (64, 96), dtype=np.uint8))
    colour = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "b_colour.png"), colour)
    cv2.imwrite(str(tmp_path / "c_big.png"), rng.integers(0, 255, (128, 192), dtype=np.uint8))
    (tmp_path / "d_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    deep = rng.integers(0, 65535, (64, 96), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "e_deep.png"), deep)
    small = rng.integers(0, 255, (40, 50), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "f_small.png"), small)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path, colour, deep, small


def test_folder_flags_bad_frames_instead_of_skipping_them(odd_folder):
    root, colour, deep, small = odd_folder
    src = _folder(root)
    out = np.zeros((64, 96, 1), np.uint8)
    grabs = []
    with pytest.raises(EndOfStream):
        while True:
            out[:] = 7
            grabs.append((src.grab(out, 1.0), out.copy()))
    names = [e.path.name for e in src.entries]
    assert names == ["a_ok.png", "b_colour.png", "c_big.png", "d_broken.png", "e_deep.png", "f_small.png"]
    assert [g.source_name for g, _ in grabs] == names
    bad = {name: g.bad_frame for name, (g, _) in zip(names, grabs, strict=True)}
    assert bad["a_ok.png"] is None and bad["b_colour.png"] is None  # colour converts to mono8
    assert "192x128" in bad["c_big.png"] and "96x64 ring slot" in bad["c_big.png"]
    assert bad["d_broken.png"].startswith("d_broken.png: ") and "IHDR" in bad["d_broken.png"]
    np.testing.assert_array_equal(grabs[1][1][:, :, 0], cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY))
    assert np.all(grabs[2][1] == 7)  # a bad frame leaves the slot alone
    # 16-bit: the top 8 bits, as training reads them
    assert bad["e_deep.png"] is None
    np.testing.assert_array_equal(grabs[4][1][:, :, 0], (deep >> 8).astype(np.uint8))
    # a smaller image: at its native size in the slot's top-left corner, the rest of the slot untouched
    g, pixels = grabs[5]
    assert g.bad_frame is None and (g.height, g.width) == (40, 50)
    np.testing.assert_array_equal(pixels[:40, :50, 0], small)
    assert np.all(pixels[40:] == 7) and np.all(pixels[:, 50:] == 7)
    assert [g.camera_frame_id for g, _ in grabs] == [0, 1, 2, 3, 4, 5]  # still one frame each, no gaps


def test_folder_open_reads_headers_only(odd_folder, monkeypatch):
    """Start-up decodes nothing (a folder of 10 000 images opens in a second): images are read in their turn."""
    root, *_ = odd_folder
    decoded = []
    real_imread = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: decoded.append(a[0]) or real_imread(*a, **k))
    src = _folder(root, pattern="[abf]_*")
    assert decoded == []
    src.grab(np.zeros((64, 96, 1), np.uint8), 1.0)
    assert [Path(p).name for p in decoded] == ["a_ok.png"]


def test_folder_preload_decodes_at_open_and_finds_decoder_failures_there(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((64, 96), 9, np.uint8))
    (tmp_path / "b.png").write_bytes(_png_with_garbage_pixels())
    decoded = []
    real_imread = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: decoded.append(Path(a[0]).name) or real_imread(*a, **k))
    src = _folder(tmp_path, preload=True, masks=False)
    assert decoded == ["a.png", "b.png"]
    assert src.entries[0].bad is None and "decoder" in src.entries[1].bad
    grabs = _drain(src, (64, 96, 1))
    assert decoded == ["a.png", "b.png"]  # nothing decoded again
    assert grabs[0].bad_frame is None and grabs[1].bad_frame.startswith("b.png: ")


def _png_with_garbage_pixels() -> bytes:
    """A PNG with a sound header and IEND whose pixel data is not a deflate stream: only decoding finds out."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 96, 64, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"garbage" * 20) + chunk(b"IEND", b"")


def test_folder_resize_option_is_gone_with_a_reason():
    with pytest.raises(ValueError, match="native size"):
        FolderSourceConfig(kind="folder", path="x", resize=True)


def test_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(SourceError, match="no images"):
        _folder(tmp_path)
    with pytest.raises(SourceError, match="not found"):
        _folder(tmp_path / "missing")


@pytest.mark.dataset
def test_magnetic_tile_replay_reads_masks_beside_images():
    if not (MAGNETIC_TILE / "MT_Fray").is_dir():
        pytest.skip(f"Magnetic Tile data set not found at {MAGNETIC_TILE}")
    src = _folder(MAGNETIC_TILE, pattern="MT_F*/Imgs/exp1_*", width=640, height=404)
    grabs = _drain(src, (404, 640, 1))
    names = [e.path for e in src.entries]
    assert grabs and all(p.suffix == ".jpg" for p in names)  # the NAME.png masks are not frames
    fray = [g for g, p in zip(grabs, names, strict=True) if p.parts[-3] == "MT_Fray"]
    free = [g for g, p in zip(grabs, names, strict=True) if p.parts[-3] == "MT_Free"]
    assert fray and free and all(g.bad_frame is None for g in grabs)
    assert all(g.truth.defective and g.truth.kind == "fray" for g in fray)
    assert sum(g.truth.defect_area_px > 0 for g in fray) >= len(fray) - 1
    assert all(not g.truth.defective and g.truth.defect_area_px == 0 for g in free)
    # sizes and areas at native resolution, as training counts them (anti-aliased masks: >= 128)
    for g, entry in list(zip(grabs, src.entries, strict=True))[:5]:
        assert g.truth.defect_area_px == int(read_mask(entry.path.with_suffix(".png")).sum())
        assert (g.height, g.width) == cv2.imread(str(entry.path), cv2.IMREAD_GRAYSCALE).shape
