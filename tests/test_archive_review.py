"""The review page, driven like a reviewer would in headless Chromium (Debian's chromium + chromedriver through
selenium), on an archive written by the real daemon; and the server's refusals of cross-site requests."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import pytest
from daemon_helpers import free_port, synthetic, write_config
from tiny_models import write_tiny_models

from inspector.archive.marks import MarkStore
from inspector.archive.reader import ArchiveReader
from inspector.archive.review import ReviewApp, ReviewServer
from inspector.daemon import Daemon

pytestmark = pytest.mark.timeout(180)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (the dev extra)")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("review")
    root = tmp / "archive"
    models = write_tiny_models(tmp / "models", threshold=160)
    config = write_config(
        tmp / "line.yaml",
        models,
        source=synthetic(rate=100.0, pool=16),
        port=free_port(),
        extra=f"archive:\n  enabled: true\n  path: {root}\n  pass_fraction: 0.5\n  keep_free_mb: 0\n  pool_slots: 64\n",
    )
    daemon = Daemon(config, max_frames=200, console=False, install_signals=False)
    daemon.start()
    assert daemon.wait() == 0
    assert daemon.archive.written > 10
    return root


@pytest.fixture
def server(archive):
    marks = archive / "review"
    if marks.exists():
        shutil.rmtree(marks)
    srv = ReviewServer(ReviewApp(archive, "tester"), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromedriver not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="inspector-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1500,950",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, predicate, timeout_s: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(lambda d: predicate(d))


def _rows(driver) -> list[dict]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#rows tr')].map(t => ({id: t.dataset.id, result: t.dataset.result,"
        " reason: t.dataset.reason, mark: t.querySelector('td.m').textContent}))"
    )


def _choose(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def _images_loaded(driver, *ids: str) -> bool:
    return driver.execute_script(
        "return arguments[0].every(id => { const i = document.getElementById(id);"
        " return i.complete && i.naturalWidth > 0; })",
        list(ids),
    )


def test_a_reviewer_filters_looks_and_marks(archive, server, browser):
    reader = ArchiveReader(archive)
    summaries = reader.summaries()
    browser.get(server.url)
    assert len(summaries) > 100, "enough for a second page"
    _wait(browser, lambda d: len(_rows(d)) == 100)
    browser.find_element("id", "more").click()
    _wait(browser, lambda d: len(_rows(d)) == len(summaries))
    assert not browser.find_element("id", "more").is_displayed()
    rows = _rows(browser)
    assert [r["id"] for r in rows] == [s.id for s in summaries], "newest first"

    # Filters: result, then reason and class.
    _choose(browser, "f-result", "reject")
    browser.find_element("id", "apply").click()
    rejects = [s for s in summaries if s.result == "reject"]
    _wait(browser, lambda d: len(_rows(d)) == len(rejects) and all(r["result"] == "reject" for r in _rows(d)))
    _choose(browser, "f-result", "")
    _choose(browser, "f-reason", "ok")
    browser.find_element("id", "apply").click()
    _wait(browser, lambda d: {r["reason"] for r in _rows(d)} == {"ok"})
    _choose(browser, "f-reason", "")
    _choose(browser, "f-class", "defect")
    browser.find_element("id", "apply").click()
    _wait(browser, lambda d: [r["id"] for r in _rows(d)] == [s.id for s in summaries if "defect" in s.classes])
    browser.find_element("id", "clear-filters").click()
    _wait(browser, lambda d: len(_rows(d)) == 100)

    # A reject: frame, heat map and mask load; the reasons are given; c marks it correct with the segmenter's mask.
    reject = rejects[0]
    browser.find_element("css selector", f'#rows tr[data-id="{reject.id}"]').click()
    _wait(browser, lambda d: "REJECT" in d.find_element("id", "verdict-line").text)
    _wait(browser, lambda d: _images_loaded(d, "frame", "heat", "mask"))
    why = browser.find_element("id", "why").text
    assert "block threshold" in why and "Rejected for" in why
    assert browser.execute_script("return document.getElementById('frame').naturalWidth") == 128
    _choose(browser, "m-mask", "segmenter")
    browser.find_element("tag name", "body").send_keys("c")
    _wait(browser, lambda d: "Saved" in d.find_element("id", "mark-status").text)
    mark = MarkStore(archive).get(reject.id)
    assert (mark.label, mark.truth, mark.cls, mark.mask, mark.reviewer) == (
        "correct",
        "defective",
        "defect",
        "segmenter",
        "tester",
    )
    assert (archive / "review" / "records" / f"{reject.id}.zip").is_file(), "kept beyond the quota"

    # A pass: the reviewer paints the defect the inspection missed.
    passed = next(s for s in summaries if s.result == "pass")
    browser.find_element("css selector", f'#rows tr[data-id="{passed.id}"]').click()
    _wait(browser, lambda d: "PASS" in d.find_element("id", "verdict-line").text)
    assert not browser.find_element("id", "b-false_reject").is_enabled(), "a pass cannot be a false reject"
    browser.find_element("id", "b-paint").click()
    canvas = browser.find_element("id", "paint")
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element_with_offset(canvas, -40, -40).click_and_hold().move_by_offset(
        60, 30
    ).move_by_offset(20, 40).release().perform()
    _wait(browser, lambda d: d.find_element("id", "m-mask").get_attribute("value") == "reviewer")
    browser.find_element("id", "b-missed_defect").click()
    _wait(browser, lambda d: "Saved" in d.find_element("id", "mark-status").text)
    mark = MarkStore(archive).get(passed.id)
    assert (mark.label, mark.truth, mark.mask) == ("missed_defect", "defective", "reviewer")
    painted = cv2.imread(str(archive / "review" / "masks" / f"{passed.id}.png"), cv2.IMREAD_GRAYSCALE)
    assert painted.shape == (128, 128) and 50 < int((painted > 0).sum()) < 128 * 128 // 2
    _wait(browser, lambda d: _images_loaded(d, "label"))

    # The marks survive a reload of the page, and the review filter finds them.
    browser.refresh()
    _wait(browser, lambda d: len(_rows(d)) == 100)
    marked = {r["id"]: r["mark"] for r in _rows(browser) if r["mark"]}
    assert marked == {reject.id: "correct", passed.id: "missed defect"}
    _choose(browser, "f-mark", "missed_defect")
    browser.find_element("id", "apply").click()
    _wait(browser, lambda d: [r["id"] for r in _rows(d)] == [passed.id])
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def _request(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}") if r.headers["Content-Type"] == "application/json" else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_cross_site_requests_are_refused(archive, server):
    rid = ArchiveReader(archive).summaries()[0].id
    url = f"{server.url}api/records/{rid}/mark"
    body = json.dumps({"label": "correct"}).encode()
    # A form or no-cors fetch from another site can only send text/plain: refused.
    assert _request(url, body, {"Content-Type": "text/plain"})[0] == 415
    assert _request(url, body, {"Content-Type": "application/json", "Origin": "http://evil.example"})[0] == 403
    assert _request(url, body, {"Content-Type": "application/json", "Host": "evil.example:80"})[0] == 421
    assert _request(server.url, None, {"Host": "rebound.example"})[0] == 421
    assert MarkStore(archive).get(rid) is None
    status, reply = _request(url, body, {"Content-Type": "application/json", "Origin": server.url.rstrip("/")})
    assert status == 200 and reply["mark"]["label"] == "correct"
    assert _request(f"{server.url}api/records/20000101T000000000000Z-0-000000000")[0] == 404
    assert _request(f"{server.url}api/records/..%2F..%2Fetc")[0] == 404
