"""Synthetic part renderer: a line simulator's camera, and the demo models' training data.

Shared by the daemon's synthetic source (`inspector.sources.synthetic`) and the training toolchain (which
writes `write_dataset`'s generic folder layout), so the demo line shows exactly what the demo models learned.
numpy and OpenCV only; every random choice comes from the caller's `np.random.Generator`, so a seed fixes the
output bit for bit.

A frame is a machined tile on a dark conveyor: slight pose variation (rotation, offset, size), a surface
texture (low-frequency unevenness, machining streaks along the part, fine grain), a bright chamfer at the
edge, an uneven light field with vignetting, and sensor noise. Defects are drawn on the part's interior,
before lighting and noise, like a real flaw:

- scratch: a thin (1-2 px), long, slightly curved line, bright or dark, fading along its length;
- crack: a dark, jagged random-walk line with one to three branches;
- pit: a small dark (or, less often, bright) elliptical blob with a soft profile;
- stain: a low-contrast, soft, irregular blob (several overlapping Gaussians), tinted in colour frames.

A fraction of defects is weak (contrast a few grey levels above the sensor noise). `small=True` guarantees
1..99 defect pixels; otherwise a defect covers >= 100 px (the split the config's `small_defect_fraction` uses).

Label convention: the mask is exactly the set of pixels the defect changed. Soft defects (stain, pit) are
cut at a fixed fraction of their peak contrast (`SOFT_EDGE`) and nothing is added outside the cut, so the
labelled area is the visible area, and `GroundTruth.defect_area_px` equals the mask's pixel count.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from inspector.config import DEFECT_KINDS
from inspector.frames import GroundTruth

KINDS: tuple[str, ...] = DEFECT_KINDS  # the defect kinds the line simulator draws (source.defect_kinds)
SMALL_PX = 100  # a "small" defect covers fewer pixels than this
SOFT_EDGE = 0.3  # soft defects end where their contrast falls below this fraction of the peak
WEAK_FRACTION = 0.25  # share of defects drawn at low contrast
_MIN_SIDE = 40  # below this a part cannot hold a >= 100 px crack (measured)
_MAX_TRIES = 80


def render_part(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    defective: bool,
    kind: str | None = None,
    small: bool = False,
    channels: int = 1,
) -> tuple[np.ndarray, np.ndarray, GroundTruth]:
    """Render one part -> (image (H, W, C) uint8, RGB order when C = 3; label (H, W) uint8; ground truth).

    label is 0 on background and 1 + KINDS.index(kind) on every pixel the defect changed. A defective part
    without `kind` draws one uniformly from KINDS.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if min(height, width) < _MIN_SIDE:
        raise ValueError(f"frames must be at least {_MIN_SIDE}x{_MIN_SIDE} px to hold a part, got {height}x{width}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(KINDS)}")
    if not defective and (kind is not None or small):
        raise ValueError("a good part has no defect kind or size")
    # Three independent streams: the part, its defect, and light/noise. A good and a defective part rendered
    # from the same generator state are then the same part, pixel for pixel, except where the defect is.
    part_rng, defect_rng, finish_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, 3))
    if defective and kind is None:
        kind = KINDS[int(defect_rng.integers(len(KINDS)))]

    scale = min(height, width) / 320.0  # defect sizes are tuned at 320 px and follow the frame
    surface, alpha, interior = _part(part_rng, height, width, scale)
    label = np.zeros((height, width), np.uint8)
    delta: np.ndarray | None = None
    if defective:
        assert kind is not None
        delta, footprint = _defect(defect_rng, kind, interior, scale, small)
        label[footprint] = 1 + KINDS.index(kind)
    image = _finish(finish_rng, surface, alpha, delta, kind, channels)
    area = int(np.count_nonzero(label))
    return image, label, GroundTruth(defective=defective, defect_area_px=area, kind=kind)


def random_part(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    defect_probability: float,
    small_fraction: float,
    kinds: Sequence[str] = KINDS,
    channels: int = 1,
) -> tuple[np.ndarray, np.ndarray, GroundTruth]:
    """Draw whether the part is defective, its defect kind and size class, then render it.

    The one sampling rule used by both the synthetic source and `write_dataset`.
    """
    defective = bool(rng.random() < defect_probability)
    kind = str(kinds[int(rng.integers(len(kinds)))]) if defective else None
    small = defective and bool(rng.random() < small_fraction)
    return render_part(rng, height, width, defective=defective, kind=kind, small=small, channels=channels)


def write_dataset(
    root: Path,
    n: int,
    *,
    seed: int,
    size: tuple[int, int],
    defect_probability: float = 0.5,
    small_fraction: float = 0.3,
    channels: int = 1,
) -> None:
    """Write `n` parts in the generic folder layout (see `inspector.train.datasets`).

    root/images/part_NNNNN.png, root/masks/part_NNNNN.png (defective parts only; 255 on defect pixels) and
    root/classes.csv (name,class with class one of KINDS or "good"). `size` is (height, width). The same seed
    writes the same files.
    """
    root = Path(root)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = size
    rows = []
    for i in range(n):
        image, label, truth = random_part(
            rng, height, width, defect_probability=defect_probability, small_fraction=small_fraction, channels=channels
        )
        name = f"part_{i:05d}.png"
        pixels = image[:, :, 0] if channels == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # cv2 writes BGR
        _imwrite(images / name, pixels)
        if truth.defective:
            _imwrite(masks / name, np.where(label > 0, 255, 0).astype(np.uint8))
        rows.append((name, truth.kind if truth.defective else "good"))
    with (root / "classes.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("name", "class"))
        writer.writerows(rows)


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


# ------------------------------------------------------------------------------------------ the part


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled with bicubic interpolation."""
    gh = max(2, round(cells * height / max(height, width)))
    gw = max(2, round(cells * width / max(height, width)))
    coarse = rng.random((gh, gw), dtype=np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _part(rng: np.random.Generator, height: int, width: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> surface grey levels (float32, before lighting), part coverage alpha [0, 1] (anti-aliased edge) and
    interior (bool: where defects may be drawn)."""
    angle = float(rng.uniform(-4.0, 4.0))
    cx = width * (0.5 + rng.uniform(-0.03, 0.03))
    cy = height * (0.5 + rng.uniform(-0.03, 0.03))
    pw = width * rng.uniform(0.78, 0.9)
    ph = height * rng.uniform(0.78, 0.9)
    corners = cv2.boxPoints(((cx, cy), (pw, ph), angle))
    # Draw at 16x subpixel precision with anti-aliasing: the part edge is a real, soft edge, not a staircase.
    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, [np.round(corners * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    alpha = canvas.astype(np.float32) * (1 / 255)
    margin = max(2, round(4 * scale))
    interior = cv2.erode((canvas == 255).astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0

    base = rng.uniform(95, 150)
    unevenness = (_smooth_field(rng, height, width, 5) - 0.5) * rng.uniform(8, 18)
    # Machining streaks: noise stretched along one axis, then turned with the part.
    streak_len = max(3, round(31 * scale)) | 1
    streaks = cv2.blur(rng.standard_normal((height, width), dtype=np.float32), (streak_len, 1))
    streaks *= rng.uniform(4, 9) * np.sqrt(streak_len) / 3
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), -angle, 1.0)
    streaks = cv2.warpAffine(streaks, turn, (width, height), borderMode=cv2.BORDER_REFLECT)
    grain = cv2.GaussianBlur(rng.standard_normal((height, width), dtype=np.float32), (3, 3), 0) * rng.uniform(2, 4)
    surface = (base + unevenness + streaks + grain).astype(np.float32)
    # A chamfer catches the light: a bright rim a few pixels wide along the edge.
    rim = max(3, round(5 * scale)) | 1
    surface += (alpha - cv2.erode(alpha, np.ones((rim, rim), np.uint8))) * rng.uniform(15, 35)
    return surface, alpha, interior


def _finish(
    rng: np.random.Generator,
    surface: np.ndarray,
    alpha: np.ndarray,
    delta: np.ndarray | None,
    kind: str | None,
    channels: int,
) -> np.ndarray:
    """Surface (+ defect) on the conveyor, under the light, through the sensor -> uint8 (H, W, C)."""
    height, width = surface.shape
    belt = rng.uniform(22, 45) + cv2.GaussianBlur(rng.standard_normal((height, width), dtype=np.float32), (5, 5), 0) * 3
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    light = 1 + rng.uniform(-0.3, 0.3) * xs + rng.uniform(-0.3, 0.3) * ys - rng.uniform(0, 0.5) * (xs * xs + ys * ys)
    noise_sigma = rng.uniform(1.2, 3.0)
    if channels == 1:
        part = surface if delta is None else surface + delta
        img = (part * alpha + belt * (1 - alpha)) * light
        img += rng.standard_normal((height, width), dtype=np.float32) * noise_sigma
        gray: np.ndarray = np.clip(np.rint(img), 0, 255).astype(np.uint8)[:, :, None]
        return gray
    # Colour: a slightly warm metal on a neutral belt; stains are rust-brown, other defects neutral.
    part_tint = np.array([1.0, rng.uniform(0.93, 0.99), rng.uniform(0.82, 0.94)], np.float32)
    defect_tint = np.array([1.0, 0.75, 0.45], np.float32) if kind == "stain" else np.ones(3, np.float32)
    out = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        part = surface * part_tint[c]
        if delta is not None:
            part = part + delta * defect_tint[c]
        img = (part * alpha + belt * (1 - alpha)) * light
        img += rng.standard_normal((height, width), dtype=np.float32) * noise_sigma
        out[:, :, c] = np.clip(np.rint(img), 0, 255)
    return out


# --------------------------------------------------------------------------------------- the defects


def _contrast(rng: np.random.Generator, strong: tuple[float, float], weak: tuple[float, float]) -> float:
    lo, hi = weak if rng.random() < WEAK_FRACTION else strong
    return float(rng.uniform(lo, hi))


def _anchor(rng: np.random.Generator, interior: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(interior)
    i = int(rng.integers(len(ys)))
    return float(xs[i]), float(ys[i])


def _polyline_footprint(shape: tuple[int, int], lines: list[tuple[np.ndarray, int]]) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    for points, thickness in lines:
        # LINE_8 (no anti-aliasing): every drawn pixel is fully a defect pixel, so the mask is exact.
        cv2.polylines(canvas, [np.round(points).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    return canvas > 0


def _scratch(
    rng: np.random.Generator, interior: np.ndarray, scale: float, small: bool, size: float
) -> tuple[np.ndarray, np.ndarray]:
    h, w = interior.shape
    x, y = _anchor(rng, interior)
    theta = rng.uniform(0, np.pi)
    if small:
        length, thickness = rng.uniform(12, 40) * size, 1
    else:
        length = min(rng.uniform(0.25, 0.6) * min(h, w) * size, max(h, w))
        thickness = int(rng.choice([1, 2])) if scale < 1.5 else int(rng.choice([2, 3]))
        thickness = max(thickness, round(thickness * min(size, 3.0)))  # retries on small frames thicken it
    direction = np.array([np.cos(theta), np.sin(theta)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(-0.5, 0.5, 32)[:, None]
    bow = rng.uniform(-0.08, 0.08) * length * (1 - 4 * t**2)  # a gentle arc, as a tool slipping draws
    points = np.array([x, y]) + t * length * direction + bow * normal
    footprint = _polyline_footprint((h, w), [(points, thickness)]) & interior
    sign = 1.0 if rng.random() < 0.5 else -1.0  # scratches shine or shade depending on the light
    fade = 0.5 + 0.5 * _smooth_field(rng, h, w, 6)
    delta = np.where(footprint, sign * _contrast(rng, (18, 55), (6, 11)) * fade, 0).astype(np.float32)
    return delta, footprint


def _walk(
    rng: np.random.Generator, start: np.ndarray, theta: float, length: float, step: float, wiggle: float
) -> np.ndarray:
    n = max(2, int(length / step))
    heading = theta
    points = [start]
    for _ in range(n):
        heading += rng.normal(0, wiggle) + 0.3 * (theta - heading)  # jagged, but keeps its course
        points.append(points[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
    return np.array(points)


def _crack(
    rng: np.random.Generator, interior: np.ndarray, scale: float, small: bool, size: float
) -> tuple[np.ndarray, np.ndarray]:
    h, w = interior.shape
    x, y = _anchor(rng, interior)
    theta = rng.uniform(0, 2 * np.pi)
    step = max(2.0, 3.0 * scale)
    if small:
        length, thickness, branches = rng.uniform(10, 30) * size, 1, int(rng.integers(0, 2))
    else:
        length = min(rng.uniform(0.2, 0.5) * min(h, w) * size, max(h, w))
        # On small frames a 1 px crack clipped by the part edge can stay under 100 px: retries thicken it.
        thickness = max(1, round(rng.uniform(1, 2.4) * scale * size))
        branches = int(rng.integers(1, 4))
    main = _walk(rng, np.array([x, y]), theta, length, step, 0.5)
    lines = [(main, thickness)]
    for _ in range(branches):
        at = main[int(rng.integers(1, len(main)))]
        fork = theta + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        lines.append((_walk(rng, at, fork, length * rng.uniform(0.15, 0.45), step, 0.6), max(1, thickness - 1)))
    footprint = _polyline_footprint((h, w), lines) & interior
    fade = 0.6 + 0.4 * _smooth_field(rng, h, w, 8)
    delta = np.where(footprint, -_contrast(rng, (30, 75), (8, 14)) * fade, 0).astype(np.float32)
    return delta, footprint


def _soft_blob(
    h: int, w: int, centers: list[tuple[float, float, float, float, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of anisotropic Gaussians (cx, cy, sx, sy, angle) normalised to peak 1, cut at SOFT_EDGE."""
    field = np.zeros((h, w), np.float32)
    reach = max(max(sx, sy) for _, _, sx, sy, _ in centers) * 3
    x0 = int(max(0, min(c[0] for c in centers) - reach))
    x1 = int(min(w, max(c[0] for c in centers) + reach + 1))
    y0 = int(max(0, min(c[1] for c in centers) - reach))
    y1 = int(min(h, max(c[1] for c in centers) + reach + 1))
    if x1 <= x0 or y1 <= y0:
        return field, field > 0
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    roi = field[y0:y1, x0:x1]
    for cx, cy, sx, sy, angle in centers:
        c, s = np.cos(angle), np.sin(angle)
        u = (xx - cx) * c + (yy - cy) * s
        v = -(xx - cx) * s + (yy - cy) * c
        roi += np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    peak = float(roi.max())
    if peak > 0:
        roi /= peak
    return field, field >= SOFT_EDGE


def _pit(
    rng: np.random.Generator, interior: np.ndarray, scale: float, small: bool, size: float
) -> tuple[np.ndarray, np.ndarray]:
    h, w = interior.shape
    x, y = _anchor(rng, interior)
    radius = (rng.uniform(1.2, 2.6) if small else max(4.0, rng.uniform(3.5, 7.0) * scale)) * size
    sx = radius * rng.uniform(0.8, 1.2)
    sy = radius * rng.uniform(0.8, 1.2)
    field, footprint = _soft_blob(h, w, [(x, y, sx, sy, rng.uniform(0, np.pi))])
    footprint &= interior
    sign = 1.0 if rng.random() < 0.25 else -1.0  # mostly holes (dark); sometimes a bright inclusion
    delta = np.where(footprint, sign * _contrast(rng, (35, 80), (9, 16)) * field, 0).astype(np.float32)
    return delta, footprint


def _stain(
    rng: np.random.Generator, interior: np.ndarray, scale: float, small: bool, size: float
) -> tuple[np.ndarray, np.ndarray]:
    h, w = interior.shape
    x, y = _anchor(rng, interior)
    if small:
        blobs = [(x, y, rng.uniform(1.5, 3.0) * size, rng.uniform(1.5, 3.0) * size, rng.uniform(0, np.pi))]
    else:
        r = max(6.0, rng.uniform(8, 28) * scale) * size
        blobs = [
            (
                x + rng.normal(0, r * 0.6),
                y + rng.normal(0, r * 0.6),
                r * rng.uniform(0.4, 1.0),
                r * rng.uniform(0.4, 1.0),
                rng.uniform(0, np.pi),
            )
            for _ in range(int(rng.integers(2, 5)))
        ]
    field, footprint = _soft_blob(h, w, blobs)
    footprint &= interior
    sign = 1.0 if rng.random() < 0.3 else -1.0  # mostly darker residue; sometimes a lighter film
    delta = np.where(footprint, sign * _contrast(rng, (10, 22), (4, 8)) * field, 0).astype(np.float32)
    return delta, footprint


_DRAWERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "crack": _crack,
    "pit": _pit,
    "stain": _stain,
}


def _defect(
    rng: np.random.Generator, kind: str, interior: np.ndarray, scale: float, small: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Draw until the defect falls in its size class: small = 1..99 px, otherwise >= 100 px.

    A draw can miss its class (a scratch clipped by the part's edge, a pit on a tiny frame); each retry
    nudges the size towards the class, so this ends quickly even on small frames.
    """
    size = 1.0
    for _ in range(_MAX_TRIES):
        delta, footprint = _DRAWERS[kind](rng, interior, scale, small, size)
        area = int(np.count_nonzero(footprint))
        if small and 0 < area < SMALL_PX:
            return delta, footprint
        if not small and area >= SMALL_PX:
            return delta, footprint
        size = size * 0.85 if small and area >= SMALL_PX else min(size * 1.15, 8.0)
    raise ValueError(
        f"cannot draw a {'small ' if small else ''}{kind} in a {interior.shape[0]}x{interior.shape[1]} frame; "
        "use a larger frame"
    )
