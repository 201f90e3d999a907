"""Overload is shed early, not late (docs/RELIABILITY.md): the real daemon with the real tiny ONNX models, whose
recognizer batches are made slow by a fixed sleep around the real ONNX Runtime backend's run(), frames arriving
faster than that capacity, a real SUB socket and real scrapes of the exporter.

No assert here is on wall-clock speed: the deadline is judged from the verdicts' own timestamps, and the
margins (deadline vs batch time) are wide enough that a loaded machine changes how many frames are inspected,
not whether the properties hold.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from daemon_helpers import Collector, free_port, scrape, synthetic, total, write_config
from tiny_models import write_tiny_models

from inspector.backends.onnxruntime import OnnxRuntimeBackend
from inspector.daemon import Daemon

pytestmark = pytest.mark.timeout(120)

BATCH_SLEEP_S = 0.025  # added to every recognizer batch: capacity about batch_size / 25 ms


class SlowRecognizer:
    """The real ONNX Runtime backend, with `sleep_s` added to each recognizer batch (`slow_batch` sleeps
    `slow_s` instead, counting the inference thread's batches from 1). Counts the frames the inference thread
    ran through the recognizer: the networks' work, whatever verdict it led to."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        sleep_s: float,
        slow_batch: int = 0,
        slow_s: float = 0.0,
        segmenter_s: float = 0.0,
    ):
        self.frames = 0
        self.batches = 0
        self._lock = threading.Lock()
        original = OnnxRuntimeBackend.run

        def run(backend: OnnxRuntimeBackend, n: int):
            out = original(backend, n)
            if "block_scores" not in out:
                time.sleep(segmenter_s)  # the segmenter
                return out
            pause = sleep_s
            if threading.current_thread().name == "inference":
                with self._lock:
                    self.frames += n
                    self.batches += 1
                    if self.batches == slow_batch:
                        pause = slow_s
            time.sleep(pause)
            return out

        monkeypatch.setattr(OnnxRuntimeBackend, "run", run)


def _line(tmp_path: Path, rate: float | None, pipeline: str) -> tuple[Path, int]:
    port = free_port()
    models = write_tiny_models(tmp_path / "models")
    config = write_config(
        tmp_path / "line.yaml", models, source=synthetic(rate=rate), port=port, extra=f"pipeline: {pipeline}\n"
    )
    return config, port


def _run(config: Path, port: int, frames: int) -> tuple[Daemon, Collector, dict[str, float]]:
    sub = Collector(port)
    daemon = Daemon(config, max_frames=frames, console=False, install_signals=False, before_start=sub.wait_subscribed)
    daemon.start()
    assert daemon.pipeline.finished.wait(90)
    end = time.monotonic() + 30
    while daemon.publisher.published + daemon.publisher.dropped < frames:
        assert time.monotonic() < end
        time.sleep(0.02)
    samples = scrape(daemon.metrics_port)  # while the exporter still runs
    assert daemon.wait() == 0
    sub.close()
    return daemon, sub, samples


def _one_verdict_each(daemon: Daemon, sub: Collector, n: int) -> list[dict]:
    verdicts = sub.verdicts()
    assert [v["seq"] for v in verdicts] == list(range(n))  # every acquired frame, once, in order
    assert daemon.pipeline.counters.acquired == n
    return verdicts


def test_frames_faster_than_capacity_are_shed_at_admission_and_the_inspected_ones_make_their_deadline(
    tmp_path, monkeypatch
):
    slow = SlowRecognizer(monkeypatch, BATCH_SLEEP_S)
    deadline_ms = 800
    # 64 slots hold more than a second of frames at capacity: it is admission, not a full ring, that sheds.
    config, port = _line(tmp_path, 400.0, f"{{ring_slots: 64, batch_size: 2, deadline_ms: {deadline_ms}}}")
    n = 400
    daemon, sub, samples = _run(config, port, n)
    verdicts = _one_verdict_each(daemon, sub, n)

    inspected = [v for v in verdicts if v["inspected"]]
    assert inspected
    late = [v for v in inspected if v["decided_ns"] - v["acquired_ns"] > deadline_ms * 1_000_000]
    assert late == []  # every inspected frame was decided within its deadline
    shed = [v for v in verdicts if v["reason"] == "overload" and v["detail"].startswith("shed at admission")]
    assert shed and all(v["result"] == "reject" and not v["inspected"] for v in shed)  # fail-safe
    # No frame was inferred and then thrown away as late: each frame the networks ran on is an inspected verdict.
    assert [v for v in verdicts if v["reason"] == "timeout"] == []
    assert slow.frames == len(inspected) == daemon.pipeline.counters.inferred
    assert daemon.pipeline.counters.shed == len(shed)

    # Capacity: measured at warm-up, scraped, and said plainly since the line runs faster.
    capacity = total(samples, "inspector_capacity_fps")
    assert 0 < capacity < 400
    assert total(samples, "inspector_source_rate_fps") == 400
    assert total(samples, "inspector_frames_dropped_total", cause="overload") == len(
        [v for v in verdicts if v["reason"] == "overload"]
    )
    (event,) = sub.events("capacity")
    assert event["source_rate_fps"] == 400 and event["capacity_fps"] == pytest.approx(capacity, rel=0.01)
    assert 0 < event["expected_overload_fraction"] < 1
    kinds = [e["kind"] for e in sub.events() if e["kind"] != "test-probe"]
    assert kinds.index("start") < kinds.index("capacity")


def test_when_the_ring_is_the_bound_every_inspected_frame_was_resized_at_acquisition(tmp_path, monkeypatch):
    # A fast line against a small ring: every frame that gets a slot is inspected (admission could keep more
    # than the ring holds), so its resize belongs on the acquisition thread, beside inference, and none on the
    # inference thread (where it would cost inspected frames: docs/RELIABILITY.md, Overload).
    slow = SlowRecognizer(monkeypatch, BATCH_SLEEP_S)
    config, port = _line(tmp_path, 400.0, "{ring_slots: 8, batch_size: 2, deadline_ms: 1000}")
    n = 300
    daemon, sub, _ = _run(config, port, n)
    verdicts = _one_verdict_each(daemon, sub, n)
    inspected = [v for v in verdicts if v["inspected"]]
    ring_full = [v for v in verdicts if v["reason"] == "overload" and v["detail"].endswith("ring slots were busy")]
    assert inspected and ring_full  # overloaded, and shed by the full ring
    assert slow.frames == len(inspected)
    assert daemon.pipeline.counters.resized_late == 0


def test_below_capacity_the_gauges_are_there_and_no_capacity_event(tmp_path, monkeypatch):
    SlowRecognizer(monkeypatch, 0.002)
    config, port = _line(tmp_path, 20.0, "{batch_size: 2, deadline_ms: 2000}")
    daemon, sub, samples = _run(config, port, 20)
    verdicts = _one_verdict_each(daemon, sub, 20)
    assert total(samples, "inspector_capacity_fps") > 20  # 2 frames per ~2 ms batch, even on a loaded machine
    assert total(samples, "inspector_source_rate_fps") == 20
    assert sub.events("capacity") == []
    assert all(v["inspected"] for v in verdicts)


def test_a_gated_segmenter_that_would_not_keep_up_on_flagged_frames_is_said_at_start(tmp_path, monkeypatch):
    # A fast recognizer and a slow segmenter (gated): the line is within capacity while few frames are flagged,
    # and beyond it if most are. Said at start (log, event), before any part is lost.
    SlowRecognizer(monkeypatch, 0.002, segmenter_s=0.1)  # all flagged: 2 frames per ~0.1 s, about 20 frames/s
    config, port = _line(tmp_path, 60.0, "{batch_size: 2, deadline_ms: 2000}")
    daemon, sub, samples = _run(config, port, 10)
    _one_verdict_each(daemon, sub, 10)
    (event,) = sub.events("capacity")
    assert event["source_rate_fps"] == 60 and event["capacity_all_flagged_fps"] < 60
    assert event["capacity_fps"] == pytest.approx(total(samples, "inspector_capacity_fps"), rel=0.01)


def test_a_batch_slower_than_predicted_still_gives_timeout_verdicts(tmp_path, monkeypatch):
    # The 5th batch takes far longer than the deadline: no estimate can foresee that, so its frames are decided
    # late and get reason timeout (fail-safe); the networks ran on them.
    slow = SlowRecognizer(monkeypatch, 0.002, slow_batch=5, slow_s=1.5)
    config, port = _line(tmp_path, 50.0, "{batch_size: 2, deadline_ms: 500}")
    n = 60
    daemon, sub, _ = _run(config, port, n)
    verdicts = _one_verdict_each(daemon, sub, n)
    timeouts = [v for v in verdicts if v["reason"] == "timeout"]
    assert 1 <= len(timeouts) <= 2, [(v["seq"], v["detail"]) for v in timeouts]
    assert all("decided after the deadline" in v["detail"] and v["result"] == "reject" for v in timeouts)
    inspected = sum(v["inspected"] for v in verdicts)
    assert slow.frames == inspected + len(timeouts)
