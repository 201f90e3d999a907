#!/usr/bin/env python3
"""Refresh docs/review.png: the review page on a real archive made by the demo.

    .venv/bin/python tools/review_screenshot.py [--frames 300] [--out docs/review.png]

Runs the daemon on configs/demo.yaml (its real models, the synthetic line) with the archive in a temporary
folder, marks one reject as correct with the segmenter's mask, opens `inspector review` on it in headless
Chromium (Debian's chromium + chromedriver, through selenium) and saves a screenshot of a reject.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector.archive.review import ReviewApp, ReviewServer  # noqa: E402
from inspector.config import ArchiveConfig, load_config  # noqa: E402
from inspector.daemon import Daemon  # noqa: E402


def make_archive(root: Path, frames: int) -> None:
    demo = load_config(REPO / "configs" / "demo.yaml")
    overrides = {
        "publish": demo.publish.model_copy(
            update={
                "broadcast": demo.publish.broadcast.model_copy(update={"bind": "tcp://127.0.0.1:*"}),
                "actuator": None,
            }
        ),
        "metrics": demo.metrics.model_copy(update={"enabled": False}),
        "archive": ArchiveConfig(enabled=True, path=str(root), pass_fraction=0.2, keep_free_mb=0, pool_slots=64),
    }
    daemon = Daemon(
        REPO / "configs" / "demo.yaml",
        max_frames=frames,
        console=False,
        install_signals=False,
        config_overrides=overrides,
    )
    daemon.start()
    daemon.wait()
    print(f"archive: {daemon.archive.written} records from {frames} frames", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "review.png")
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import Select, WebDriverWait

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "archive"
        make_archive(root, args.frames)
        server = ReviewServer(ReviewApp(root, "line engineer"), "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        opts = webdriver.ChromeOptions()
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp}/chromium",
            "--window-size=1500,900",
            "--hide-scrollbars",
        ):
            opts.add_argument(arg)
        opts.binary_location = "/usr/bin/chromium"
        driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
        try:
            driver.get(server.url)
            wait = WebDriverWait(driver, 30)
            wait.until(lambda d: d.find_elements("css selector", "#rows tr"))
            # A reject whose blob is large enough to see at a glance.
            rows = driver.find_elements("css selector", '#rows tr[data-result="reject"]')
            ids = [r.get_attribute("data-id") for r in rows]
            best = max(ids[:40], key=lambda rid: _area(server, rid))
            others = [r for r in ids if r != best][:2]
            for rid in others:  # a couple of marked rows in the list, as after a few minutes of review
                driver.find_element("css selector", f'#rows tr[data-id="{rid}"]').click()
                wait.until(lambda d, rid=rid: rid in d.find_element("id", "facts").text)
                driver.find_element("id", "b-correct").click()
                wait.until(lambda d: "Saved" in d.find_element("id", "mark-status").text)
            driver.find_element("css selector", f'#rows tr[data-id="{best}"]').click()
            wait.until(lambda d: best in d.find_element("id", "facts").text)
            Select(driver.find_element("id", "m-mask")).select_by_value("segmenter")
            driver.find_element("id", "b-correct").click()
            wait.until(lambda d: "Saved" in d.find_element("id", "mark-status").text)
            wait.until(
                lambda d: d.execute_script(
                    "return ['frame','heat','mask'].every(i => document.getElementById(i).complete "
                    "&& document.getElementById(i).naturalWidth > 0)"
                )
            )
            time.sleep(0.3)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
            print(f"wrote {args.out}", file=sys.stderr)
        finally:
            driver.quit()
            server.shutdown()
    return 0


def _area(server: ReviewServer, rid: str) -> int:
    rec = server.app.open(rid)
    return sum(d["area_px"] for d in rec.meta["decision"]["defects"])


if __name__ == "__main__":
    sys.exit(main())
