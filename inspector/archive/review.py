"""`inspector review --archive DIR`: a local web page to look at archived frames and mark them.

    inspector review --archive /var/lib/inspector/archive/line1-cam1 [--port 8765] [--bind 127.0.0.1]

The page (one static HTML file with its script, no build step) lists the archive's frames newest first,
filterable by result, reason, defect class, review mark and time; for each, the frame with the recognizer's
block heat map, the segmenter's defect pixels and the defect boxes overlaid, the verdict and why it was
reached (re-derived with inspector.decision from the stored outputs). A reviewer marks a frame as correct, a
false reject or a missed defect, and may take the segmenter's mask as the pixel label or paint one. Marks go to
ARCHIVE/review/ (inspector.archive.marks), beside the archive; the daemon may keep writing meanwhile.

Served by the standard library's ThreadingHTTPServer: a few requests a second from one or two reviewers need no
framework. Loopback only by default. Because a page on any web site could try to POST to 127.0.0.1, writes must
be JSON (cross-origin JSON needs a CORS preflight, which this server never grants), an Origin header must be
this server's, and the Host header must name this server (defeats DNS rebinding).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import json
import logging
import re
import socket
import sys
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspector.archive.layout import ArchiveFormatError, Record, Summary
from inspector.archive.marks import LABELS, Mark, MarkError, MarkStore, truth_of
from inspector.archive.reader import ArchiveReader, RecordGone
from inspector.archive.redecide import Redecider, explain, outcome_matches
from inspector.decision import BLOCK_CLASS

log = logging.getLogger("inspector.review")

DEFAULT_PORT = 8765
PAGE_SIZE = 100
MAX_BODY = 16 << 20  # a painted mask as PNG data URL: a few hundred kB for large frames
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def _parse_time(text: str) -> int:
    from datetime import datetime, timezone

    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1e9)


class ReviewApp:
    """What the request handlers share: the reader (its caches are guarded by a lock), marks, overlays."""

    def __init__(self, archive: Path, reviewer: str = ""):
        self.root = archive
        self.reader = ArchiveReader(archive)
        self.marks = MarkStore(archive)
        self.own = Redecider(self.reader)  # each record with the thresholds it was decided with
        self.reviewer = reviewer
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ list

    def listing(self, query: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            summaries = self.reader.summaries()
            marks = dict(self.marks.all())
        since = _parse_time(query["since"]) if query.get("since") else None
        until = _parse_time(query["until"]) if query.get("until") else None
        facets: dict[str, dict[str, int]] = {"result": {}, "reason": {}, "class": {}, "mark": {}}
        picked: list[Summary] = []
        for s in summaries:
            mark = marks.get(s.id)
            label = mark.label if mark else "unreviewed"
            for key, values in (("result", [s.result]), ("reason", [s.reason]), ("class", s.classes or ["none"])):
                for v in values:
                    facets[key][v] = facets[key].get(v, 0) + 1
            facets["mark"][label] = facets["mark"].get(label, 0) + 1
            if query.get("result") and s.result != query["result"]:
                continue
            if query.get("reason") and s.reason != query["reason"]:
                continue
            if query.get("class"):
                if query["class"] == "none" and s.classes:
                    continue
                if query["class"] != "none" and query["class"] not in s.classes:
                    continue
            if query.get("mark") and label != query["mark"]:
                continue
            if since is not None and s.t < since:
                continue
            if until is not None and s.t >= until:
                continue
            picked.append(s)
        offset = max(0, int(query.get("offset", 0)))
        limit = min(1000, max(1, int(query.get("limit", PAGE_SIZE))))
        rows = []
        for s in picked[offset : offset + limit]:
            row = s.to_dict()
            mark = marks.get(s.id)
            row["mark"] = mark.to_dict() if mark else None
            rows.append(row)
        return {"total": len(picked), "offset": offset, "records": rows, "facets": facets}

    # ---------------------------------------------------------------------------------------- record

    def open(self, rid: str) -> Record:
        with self.lock:
            return self.reader.open(rid)

    def classes(self, record: Record) -> list[str]:
        seg = record.meta["model_hashes"].get("segmenter")
        if seg:
            with self.lock:
                return list(self.reader.manifest(seg).classes[1:])
        return [BLOCK_CLASS]

    def detail(self, rid: str) -> dict[str, Any]:
        record = self.open(rid)
        with self.lock:
            cfg, mode = self.own.settings(record)
            outcome = self.own(record)
        mark = self.marks.get(rid)
        meta = record.meta
        return {
            "summary": record.summary().to_dict(),
            "verdict": meta["verdict"],
            "decision": meta["decision"],
            "kept_as": meta.get("kept_as"),
            "frame": meta["frame"],
            "segmenter_mode": mode,
            "segmenter_ran": meta.get("segmenter_ran", False),
            "thresholds": meta["decision_config"],
            "why": explain(record, outcome, cfg, mode),
            "reproduced": outcome_matches(outcome, record),
            "classes": self.classes(record),
            "mark": mark.to_dict() if mark else None,
            "has_label_mask": self.marks.mask_path(rid).is_file(),
        }

    def heat_png(self, rid: str) -> bytes:
        """The recognizer's block scores over the frame: inferno colours, more opaque where higher; blocks at or
        above the block threshold outlined."""
        record = self.open(rid)
        h, w = record.frame_size
        scores = np.clip(record.block_scores(), 0.0, 1.0)
        gh, gw = scores.shape
        big = cv2.resize(scores, (w, h), interpolation=cv2.INTER_NEAREST)
        colour = cv2.applyColorMap((big * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
        alpha = (20 + 150 * big).astype(np.uint8)
        rgba = np.dstack([colour, alpha])
        threshold = record.meta["decision_config"]["block_threshold"]
        for r, c in zip(*np.nonzero(scores >= threshold), strict=True):
            y0, y1 = round(r * h / gh), round((r + 1) * h / gh) - 1
            x0, x1 = round(c * w / gw), round((c + 1) * w / gw) - 1
            cv2.rectangle(rgba, (x0, y0), (x1, y1), (255, 255, 255, 255), max(1, w // 320))
        return _png(rgba)

    def mask_png(self, rid: str) -> bytes | None:
        """The segmenter's defect pixels (at the record's pixel threshold, outside ignore regions), in red."""
        record = self.open(rid)
        pixels = record.pixel_scores()
        if pixels is None:
            return None
        with self.lock:
            decider = self.own.decider(record)
        if decider.pixels is None:
            return None
        return _overlay(self.segmenter_mask(record, pixels), (40, 40, 255))

    def segmenter_mask(self, record: Record, pixels: np.ndarray | None = None) -> np.ndarray:
        """Frame-sized bool mask of the segmenter's defect pixels as the decision saw them."""
        pixels = record.pixel_scores() if pixels is None else pixels
        if pixels is None:
            raise MarkError("this frame has no segmenter output")
        with self.lock:
            decider = self.own.decider(record)
        hit = decider.defect_pixels(pixels)
        h, w = record.frame_size
        return cv2.resize(hit.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0

    def label_png(self, rid: str) -> bytes | None:
        path = self.marks.mask_path(rid)
        if not path.is_file():
            return None
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        return None if mask is None else _overlay(mask > 0, (60, 200, 60))

    # ------------------------------------------------------------------------------------------ mark

    def mark(self, rid: str, body: dict[str, Any]) -> dict[str, Any] | None:
        record = self.open(rid)
        reviewer = str(body.get("reviewer") or self.reviewer)[:100]
        label = body.get("label")
        if label is None:
            self.marks.clear(rid, reviewer)
            return None
        if label not in LABELS:
            raise MarkError(f"label must be one of {', '.join(LABELS)}")
        decided = record.meta["decision"]["result"]
        truth = truth_of(label, decided)
        cls = body.get("class") or None
        mask_source = body.get("mask") or None
        mask_png: bytes | None = None
        if truth == "good":
            cls, mask_source = None, None
        else:
            classes = self.classes(record)
            if cls is None:
                defects = record.meta["decision"]["defects"]
                cls = defects[0]["class"] if defects else None
            if cls is None:
                raise MarkError("choose the defect's class")
            if cls not in classes:
                raise MarkError(f"class {cls!r} is not one of the models' classes ({', '.join(classes)})")
            if mask_source == "segmenter":
                if not self.segmenter_mask(record).any():
                    raise MarkError("the segmenter marked no defect pixels on this frame: paint the defect instead")
            elif mask_source == "reviewer" and body.get("mask_png"):
                mask_png = _decode_painted(str(body["mask_png"]), record.frame_size)
        note = str(body.get("note") or "")[:2000]
        mark = Mark(rid, label, truth, cls, mask_source, reviewer, note=note)
        with self.lock:
            path = self.reader.path_of(rid)
        return self.marks.put(mark, path, mask_png).to_dict()


def _png(image: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return png.tobytes()


def _overlay(mask: np.ndarray, bgr: tuple[int, int, int]) -> bytes:
    """A bool mask as a translucent RGBA layer with an opaque outline (so small defects stay visible)."""
    h, w = mask.shape
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[mask] = (*bgr, 110)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgba, contours, -1, (*bgr, 255), max(1, w // 400))
    return _png(rgba)


def _decode_painted(data_url: str, frame_size: tuple[int, int]) -> bytes:
    """A painted mask (PNG data URL from the page's canvas, painted = alpha > 0) -> an 8-bit 0/255 PNG."""
    match = re.fullmatch(r"data:image/png;base64,([A-Za-z0-9+/=\s]+)", data_url)
    if not match:
        raise MarkError("mask_png must be a PNG data URL")
    try:
        raw = base64.b64decode(match.group(1), validate=False)
    except (binascii.Error, ValueError):
        raise MarkError("mask_png is not valid base64") from None
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise MarkError("mask_png is not a readable PNG")
    if image.shape[:2] != frame_size:
        raise MarkError(f"painted mask is {image.shape[1]}x{image.shape[0]}, the frame {frame_size[1]}x{frame_size[0]}")
    mask = (image[:, :, 3] if image.ndim == 3 and image.shape[2] == 4 else image.reshape(*frame_size, -1).max(2)) > 0
    if not mask.any():
        raise MarkError("the painted mask is empty: paint the defect, or choose no pixel label")
    return _png(mask.astype(np.uint8) * 255)


# ---------------------------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # The page and the API answer only to names of this server: a DNS-rebound name is refused.
    def _host_ok(self) -> bool:
        allowed = self.server.allowed_hosts
        if allowed is None:
            return True
        host = (self.headers.get("Host") or "").lower()
        return host in allowed

    def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        if ctype.startswith("text/html"):
            self.send_header(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                "script-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
            )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._host_ok():
            self._error(HTTPStatus.MISDIRECTED_REQUEST, "unknown Host")
            return
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        app = self.server.app
        try:
            if url.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
            elif url.path == "/api/meta":
                self._json(
                    HTTPStatus.OK,
                    {**app.reader.identity, "archive": str(app.root), "labels": LABELS, "reviewer": app.reviewer},
                )
            elif url.path == "/api/records":
                self._json(HTTPStatus.OK, app.listing(query))
            elif m := re.fullmatch(r"/api/records/([^/]+)", url.path):
                self._json(HTTPStatus.OK, app.detail(m.group(1)))
            elif m := re.fullmatch(r"/api/records/([^/]+)/(image|heat|mask|label)\.png", url.path):
                rid, what = m.groups()
                if what == "image":
                    data: bytes | None = app.open(rid).image_png()
                else:
                    data = {"heat": app.heat_png, "mask": app.mask_png, "label": app.label_png}[what](rid)
                if data is None:
                    self._error(HTTPStatus.NOT_FOUND, f"no {what} for this frame")
                else:
                    self._send(HTTPStatus.OK, data, "image/png", cache=what in ("image", "heat"))
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found")
        except RecordGone:
            self._error(HTTPStatus.NOT_FOUND, "no such record (deleted by the archive's quota?)")
        except (ValueError, KeyError, MarkError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except ArchiveFormatError as exc:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))

    def do_POST(self) -> None:
        if not self._host_ok():
            self._error(HTTPStatus.MISDIRECTED_REQUEST, "unknown Host")
            return
        origin = self.headers.get("Origin")
        allowed = self.server.allowed_hosts
        if origin is not None and allowed is not None and urllib.parse.urlsplit(origin).netloc.lower() not in allowed:
            self._error(HTTPStatus.FORBIDDEN, "cross-origin request refused")
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > MAX_BODY else HTTPStatus.LENGTH_REQUIRED, "body"
            )
            return
        m = re.fullmatch(r"/api/records/([^/]+)/mark", urllib.parse.urlsplit(self.path).path)
        if not m:
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            self._json(HTTPStatus.OK, {"mark": self.server.app.mark(m.group(1), body)})
        except RecordGone:
            self._error(HTTPStatus.NOT_FOUND, "no such record (deleted by the archive's quota?)")
        except (ValueError, MarkError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except OSError as exc:
            self._error(HTTPStatus.INSUFFICIENT_STORAGE, f"cannot store the mark: {exc.strerror or exc}")


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: ReviewApp, bind: str = "127.0.0.1", port: int = DEFAULT_PORT):
        self.app = app
        self.page = resources.files("inspector.archive").joinpath("review.html").read_bytes()
        self.address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        super().__init__((bind, port), _Handler)
        self.port = self.server_address[1]
        if bind in LOOPBACK:
            names = {"127.0.0.1", "localhost", "[::1]"}
            self.allowed_hosts: set[str] | None = {f"{n}:{self.port}" for n in names}
        else:
            self.allowed_hosts = None  # reachable under names we cannot know: the operator chose to expose it

    @property
    def url(self) -> str:
        host = str(self.server_address[0])
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"


# ----------------------------------------------------------------------------------------------- CLI


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "review",
        help="serve the archive's review page (look at archived frames, mark false rejects and missed defects)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--archive", required=True, type=Path, help="archive directory (archive.path of the line)")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: %(default)s, this host only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s; 0 = any free port)")
    p.add_argument("--reviewer", default=None, help="name stored with each mark (default: your login name)")
    p.set_defaults(func=cmd_review)


def cmd_review(args: argparse.Namespace) -> int:
    try:
        app = ReviewApp(args.archive, args.reviewer or _login())
    except (FileNotFoundError, ArchiveFormatError) as exc:
        print(f"inspector review: {exc}", file=sys.stderr)
        return 2
    try:
        server = ReviewServer(app, args.bind, args.port)
    except OSError as exc:
        print(f"inspector review: cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 4
    if server.allowed_hosts is None:
        print(
            f"inspector review: listening on {args.bind}, not loopback: anyone who reaches it can read the archive "
            "and mark frames (there is no login)",
            file=sys.stderr,
        )
    print(f"review page: {server.url}  (archive {args.archive}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
