"""The pipeline, in-process: the real Daemon with real tiny ONNX models, real ZeroMQ subscribers on 127.0.0.1
and real HTTP scrapes of the exporter. Each test checks that every acquired frame got exactly one verdict."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from daemon_helpers import Collector, free_port, scrape, synthetic, total, write_config, write_images
from tiny_models import write_tiny_models

from inspector.capacity import Capacity, ServiceTime
from inspector.daemon import Daemon
from inspector.frames import Reason
from inspector.pipeline import Pipeline, PipelineCounters, TicketPool
from inspector.runtime import StartupError

# A guard against a hang, not a speed limit: on a loaded 2-core machine one of these tests can take minutes.
pytestmark = pytest.mark.timeout(300)

# The tiny models' `work` is constant-folded by ORT's optimiser; with optimisation off it is real compute.
SLOW = "  onnxruntime: {intra_op_threads: 1, graph_optimization: disable}"


def _models(tmp_path: Path, **options) -> tuple[Path, Path]:
    return write_tiny_models(tmp_path / "models", **options)


def _check_one_verdict_per_frame(daemon: Daemon, sub: Collector, n: int) -> list[dict]:
    verdicts = sub.verdicts()
    seqs = [v["seq"] for v in verdicts]
    assert seqs == list(range(n)), f"expected seq 0..{n - 1} once each, got {seqs[:10]}... ({len(seqs)})"
    assert daemon.pipeline.counters.acquired == n
    assert daemon.publisher.published + daemon.publisher.dropped == n
    return verdicts


def _serve(config: Path, max_frames: int | None):
    """Start a daemon with a live subscriber; the caller scrapes while it runs, then calls finish()."""
    port = int(config.read_text().split("tcp://127.0.0.1:")[1].split('"')[0])
    sub = Collector(port)
    daemon = Daemon(
        config, max_frames=max_frames, console=False, install_signals=False, before_start=sub.wait_subscribed
    )
    daemon.start()
    return daemon, sub


def _finish(daemon: Daemon, sub: Collector) -> int:
    rc = daemon.wait()
    sub.close()
    return rc


def _scrape_when_done(daemon: Daemon, n: int) -> dict[str, float]:
    """Wait until all n verdicts went through the publisher, then scrape the live exporter over HTTP."""
    assert daemon.pipeline.finished.wait(40)
    end = time.monotonic() + 10
    while daemon.publisher.published + daemon.publisher.dropped < n:
        assert time.monotonic() < end
        time.sleep(0.02)
    return scrape(daemon.metrics_port)


def test_one_verdict_per_frame_and_counters_reconcile(tmp_path):
    port = free_port()
    config = write_config(tmp_path / "line.yaml", _models(tmp_path), source=synthetic(rate=None), port=port)
    daemon, sub = _serve(config, max_frames=40)
    samples = _scrape_when_done(daemon, 40)
    assert _finish(daemon, sub) == 0
    verdicts = _check_one_verdict_per_frame(daemon, sub, 40)
    acquired = total(samples, "inspector_frames_acquired_total")
    published = total(samples, "inspector_verdicts_total")
    dropped = total(samples, "inspector_verdicts_dropped_total")
    assert acquired == 40 and published + dropped == acquired
    v = verdicts[0]
    assert v["config_hash"] == daemon.runtime.config_hash
    assert set(v["model_hashes"]) == {"recognizer", "segmenter"}
    assert v["inspected"] and v["result"] in ("pass", "reject")
    assert all(v["camera_frame_id"] == i for i, v in enumerate(verdicts))
    # Heartbeats come every second, so a loaded machine that takes longer than that adds some: not what is tested.
    assert [e["kind"] for e in sub.events() if e["kind"] not in ("test-probe", "heartbeat")] == [
        "start",
        "camera",
        "stop",
    ]


def test_overload_still_one_verdict_per_frame(tmp_path):
    """Ring of 2 slots, a slow model and a fast free-running line: overloads, but every frame has its verdict."""
    port = free_port()
    models = _models(tmp_path, work=3000)  # ~20 ms per batch
    extra = "pipeline: {ring_slots: 2, batch_size: 1, deadline_ms: 10000}\n"
    config = write_config(tmp_path / "line.yaml", models, source=synthetic(rate=500), port=port, extra=extra)
    config.write_text(config.read_text().replace("  onnxruntime: {intra_op_threads: 1}", SLOW))
    daemon, sub = _serve(config, max_frames=80)
    samples = _scrape_when_done(daemon, 80)
    assert _finish(daemon, sub) == 0
    verdicts = _check_one_verdict_per_frame(daemon, sub, 80)
    reasons = [v["reason"] for v in verdicts]
    overloads = reasons.count("overload")
    assert overloads > 0 and reasons.count("ok") + reasons.count("defect") > 0
    assert all(v["result"] == "reject" for v in verdicts if v["reason"] == "overload")  # fail-safe default
    assert total(samples, "inspector_frames_acquired_total") == 80
    assert total(samples, "inspector_verdicts_total") + total(samples, "inspector_verdicts_dropped_total") == 80
    assert total(samples, "inspector_verdicts_total", reason="overload") == overloads
    assert total(samples, "inspector_frames_dropped_total", cause="overload") == overloads


def test_ring_full_overloads_are_no_backlog_at_admission():
    """The inference thread not run for a while (a loaded machine) while a 500 fps line fills a 2-slot ring: the
    queue holds the ring's 2 frames, then 78 ring-full overloads. Those are decided already (fail-safe) and cost
    no inference, so they must not count as a backlog: the ring's frames make a 10 s deadline at 1.4 s a frame,
    and are admitted. (Counted, they got both shed, oldest first, and no frame of the run was inspected.)"""
    cap = Capacity(batch_size=1, single_s=1.4, batch_s=1.4)
    now = time.monotonic_ns()
    pipe = SimpleNamespace(
        runtime=SimpleNamespace(capacity=cap, deadline_ns=10_000_000_000, batch_size=1),
        service=ServiceTime(cap),
        counters=PipelineCounters(),
        _queue=collections.deque(),
        _to_inspect=0,
        _newest_to_inspect_ns=0,
        _last_admit_ns=now,
        _admitted_ns=0,
        _keep=1,
        _arrival_detail="",
    )
    pipe._fits = lambda budget_ns, batch: Pipeline._fits(pipe, budget_ns, batch)
    pipe._shed = lambda t, detail: Pipeline._shed(pipe, t, detail)
    pipe._set_keep = lambda servable, rt, full_ns: Pipeline._set_keep(pipe, servable, rt, full_ns)
    pool = TicketPool(0)
    for seq in range(80):
        t = pool.take()
        t.seq, t.slot, t.bad, t.t_acquired_mono_ns = seq, seq if seq < 2 else -1, None, now - 200_000_000 + seq
        Pipeline._enqueue(pipe, t)
    admitted = []
    while pipe._queue:
        items = []
        Pipeline._admit(pipe, items)
        admitted += [t.seq for t in items if t.slot >= 0 and t.reason is not Reason.OVERLOAD]
    assert admitted == [0, 1]
    assert pipe.counters.shed == 0 and pipe._to_inspect == 0


def test_a_deadline_no_batch_can_make_sheds_frames_at_admission(tmp_path):
    """A 5 ms deadline and a ~20 ms model: no frame can be decided in time, so none is run through the networks
    to be thrown away as late; each is rejected at admission (overload) with the prediction in its detail."""
    port = free_port()
    models = _models(tmp_path, work=3000)
    # A slot for every frame: with fewer, an inference thread the OS does not run for a while (a loaded machine)
    # lets the 200 fps line fill the ring, and the frames after it are ring-full overloads, not shed at admission.
    extra = "pipeline: {ring_slots: 32, batch_size: 4, deadline_ms: 5}\n"
    config = write_config(tmp_path / "line.yaml", models, source=synthetic(rate=200), port=port, extra=extra)
    config.write_text(config.read_text().replace("  onnxruntime: {intra_op_threads: 1}", SLOW))
    daemon, sub = _serve(config, max_frames=30)
    assert _finish(daemon, sub) == 0
    verdicts = _check_one_verdict_per_frame(daemon, sub, 30)
    assert not any(v["inspected"] for v in verdicts)
    shed = [v for v in verdicts if v["reason"] == "overload"]
    # One frame a second may go through as a probe (so that a stalled estimate can learn) and time out.
    assert len(shed) >= 25, [v["reason"] for v in verdicts]
    assert all(v["result"] == "reject" and "deadline" in v["detail"] for v in shed)
    assert all(v["detail"].startswith("shed at admission") for v in shed)
    assert daemon.pipeline.counters.inferred == 30 - len(shed)


def test_inference_error_gives_error_verdicts_and_the_daemon_goes_on(tmp_path):
    port = free_port()
    models = _models(tmp_path, poison=7)
    images = tmp_path / "images"
    specs = [(f"{i:02d}.png", 128, 128, False, 60) for i in range(10)]
    specs[4] = ("04.png", 128, 128, False, 7)  # this frame makes ONNX Runtime fail at run time
    write_images(images, specs)
    source = f"  kind: folder\n  path: {images}\n  width: 128\n  height: 128\n  loop: false"
    extra = "pipeline: {batch_size: 1}\n"
    config = write_config(tmp_path / "line.yaml", models, source=source, port=port, extra=extra)
    daemon, sub = _serve(config, max_frames=None)
    assert _finish(daemon, sub) == 0  # end of stream: a clean stop
    verdicts = _check_one_verdict_per_frame(daemon, sub, 10)
    assert [v["reason"] for v in verdicts] == ["ok"] * 4 + ["error"] + ["ok"] * 5
    assert verdicts[4]["result"] == "reject" and verdicts[4]["detail"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("gated", [False, True, False, True]), ("always", [True] * 4), ("never", [False] * 4)],
)
def test_segmenter_modes(tmp_path, mode, expected):
    port = free_port()
    images = tmp_path / "images"
    write_images(images, [(f"{i}.png", 128, 128, i % 2 == 1, 60) for i in range(4)])
    source = f"  kind: folder\n  path: {images}\n  width: 128\n  height: 128\n  loop: false"
    extra = "decision: {min_area_px: 4}\n"
    config = write_config(tmp_path / "line.yaml", _models(tmp_path), source=source, port=port, extra=extra)
    config.write_text(config.read_text().replace("  onnxruntime:", f"  segmenter_mode: {mode}\n  onnxruntime:"))
    daemon, sub = _serve(config, max_frames=None)
    assert _finish(daemon, sub) == 0
    verdicts = _check_one_verdict_per_frame(daemon, sub, 4)
    assert [v["segmenter_ran"] for v in verdicts] == expected
    assert [v["result"] for v in verdicts] == ["pass", "reject", "pass", "reject"]  # bright spot = defect
    for v in verdicts[1::2]:
        (blob,) = v["defects"]
        assert blob["class"] == "defect" and blob["area_px"] > 100


def test_image_larger_than_the_slot_is_a_bad_frame_and_the_others_are_inspected(tmp_path):
    port = free_port()
    images = tmp_path / "images"
    write_images(
        images, [("a.png", 128, 128, False, 60), ("b.png", 160, 128, False, 60), ("c.png", 128, 128, True, 60)]
    )
    source = f"  kind: folder\n  path: {images}\n  width: 128\n  height: 128\n  loop: false"
    config = write_config(tmp_path / "line.yaml", _models(tmp_path), source=source, port=port)
    daemon, sub = _serve(config, max_frames=None)
    assert _finish(daemon, sub) == 0
    verdicts = _check_one_verdict_per_frame(daemon, sub, 3)
    assert [v["reason"] for v in verdicts] == ["ok", "bad_frame", "defect"]
    assert "128x160" in verdicts[1]["detail"] and verdicts[1]["result"] == "reject"
    assert [v["source_name"] for v in verdicts] == ["a.png", "b.png", "c.png"]


def test_reload_in_process_valid_then_invalid_then_restart_only(tmp_path):
    port = free_port()
    config = write_config(tmp_path / "line.yaml", _models(tmp_path), source=synthetic(rate=100), port=port)
    daemon, sub = _serve(config, max_frames=None)
    try:
        first = daemon.runtime.config_hash
        recognizer = daemon.runtime.recognizer
        config.write_text(config.read_text() + "decision: {block_threshold: 0.7}\n")
        assert daemon.reload() == "ok"
        assert daemon.runtime.config_hash != first
        assert daemon.runtime.recognizer is recognizer  # unchanged model: reused, not reloaded
        second = daemon.runtime.config_hash
        sub.wait_for(lambda: any(v["config_hash"] == second for v in sub.verdicts()))

        good = config.read_text()
        config.write_text(good + "bogus: 1\n")
        assert daemon.reload() == "invalid"
        config.write_text(good.replace("rate_hz: 100", "rate_hz: 50"))
        assert daemon.reload() == "invalid"  # source is restart-only: refused as a whole
        assert daemon.runtime.config_hash == second
        samples = scrape(daemon.metrics_port)
        assert total(samples, "inspector_reloads_total", result="ok") == 1
        assert total(samples, "inspector_reloads_total", result="invalid") == 2
        sub.wait_for(lambda: len(sub.events("reload")) == 3)
        reloads = sub.events("reload")
        assert [r["result"] for r in reloads] == ["ok", "invalid", "invalid"]
        assert "source.rate_hz" in reloads[2]["error"]
    finally:
        daemon.stop()
        assert _finish(daemon, sub) == 0
    seqs = [v["seq"] for v in sub.verdicts()]
    assert seqs == list(range(len(seqs)))


def test_missing_model_is_a_startup_error_with_exit_3(tmp_path):
    rec, _ = _models(tmp_path)
    config = write_config(tmp_path / "line.yaml", (rec, tmp_path / "nope.onnx"), source=synthetic(), port=free_port())
    with pytest.raises(StartupError) as err:
        Daemon(config, console=False, install_signals=False).start()
    assert err.value.code == 3 and "nope.onnx" in str(err.value)
