"""Network outputs that are not probabilities (NaN, Inf, out of [0, 1]) never pass a part: the real daemon with real
ONNX Runtime running models broken by one appended node (tests/poisoned_models.py), real ZeroMQ subscribers, real
metrics scrapes, a real NOTIFY_SOCKET for the watchdog. Before this check a NaN segmenter passed every frame and a
recognizer with -5 added passed every frame with recognizer_score 0.0."""

from __future__ import annotations

import logging
import math
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import Collector, free_port, scrape, total, write_config, write_images
from poisoned_models import poison
from tiny_models import write_tiny_models

from inspector.cli import check_config
from inspector.config import HealthConfig
from inspector.daemon import Daemon
from inspector.frames import Reason
from inspector.health import Alarm, EngineHealth
from inspector.outputs import OutputGuard
from inspector.runtime import StartupError

pytestmark = pytest.mark.timeout(120)

NAN, INF = float("nan"), float("inf")
NEVER_UNHEALTHY = "health: {max_faulty_frames: 100000}\n"


# ----------------------------------------------------------------------------------------------- helpers


def _images(tmp_path: Path, bright: list[bool]) -> Path:
    """Dark parts, and parts with a bright spot (what the tiny models reject), in this order."""
    folder = tmp_path / "images"
    write_images(folder, [(f"{i:03d}.png", 128, 128, b, 60) for i, b in enumerate(bright)])
    return folder


def _folder(images: Path, *, loop: bool = False, rate_hz: float | None = None) -> str:
    rate = "null" if rate_hz is None else rate_hz
    return (
        f"  kind: folder\n  path: {images}\n  width: 128\n  height: 128\n  loop: {str(loop).lower()}\n  rate_hz: {rate}"
    )


def _config(
    tmp_path: Path, models: tuple[Path, Path], source: str, extra: str = "", mode: str = "gated", pipeline: str = ""
) -> Path:
    """A line config; the deadline is out of reach, so that a loaded machine gives no timeout verdicts."""
    port = free_port()
    extra += f"pipeline: {{deadline_ms: 60000{pipeline}}}\n"
    config = write_config(tmp_path / f"line-{port}.yaml", models, source=source, port=port, extra=extra)
    config.write_text(config.read_text().replace("  onnxruntime:", f"  segmenter_mode: {mode}\n  onnxruntime:"))
    return config


def _start(config: Path, max_frames: int | None = None) -> tuple[Daemon, Collector]:
    port = int(config.read_text().split("tcp://127.0.0.1:")[1].split('"')[0])
    sub = Collector(port)
    daemon = Daemon(
        config, max_frames=max_frames, console=False, install_signals=False, before_start=sub.wait_subscribed
    )
    daemon.start()
    return daemon, sub


def _run(config: Path, max_frames: int | None = None) -> tuple[Daemon, list[dict], dict[str, float]]:
    """Run to the end of the replay (or max_frames); every acquired frame has exactly one verdict, in order."""
    daemon, sub = _start(config, max_frames)
    try:
        assert daemon.pipeline.finished.wait(90)
        n = daemon.pipeline.counters.acquired
        end = time.monotonic() + 20
        while daemon.publisher.published + daemon.publisher.dropped < n:
            assert time.monotonic() < end
            time.sleep(0.02)
        samples = scrape(daemon.metrics_port)
    finally:
        daemon.stop()
        rc = daemon.wait()
        sub.close()
    assert rc == 0
    verdicts = sub.verdicts()
    assert [v["seq"] for v in verdicts] == list(range(n)), "a frame without exactly one verdict"
    assert daemon.publisher.published + daemon.publisher.dropped == n
    return daemon, verdicts, samples


def _models(tmp_path: Path) -> tuple[Path, Path]:
    return write_tiny_models(tmp_path / "models")


# ------------------------------------------------------------------------------------------- the guard


def _probabilities(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    p = rng.random((n, 1, 16, 16), np.float32)
    return np.concatenate([1 - p, p], axis=1)


def test_the_guard_finds_each_kind_of_bad_output_in_its_frame_only():
    guard = OutputGuard("segmenter", "pixel_scores", (2, 16, 16), class_sums=True)
    scores = _probabilities(6)
    assert not guard.check(scores).any()
    scores[1, 1, 3, 4] = NAN
    scores[2, 0, 0, 0] = INF
    scores[3] -= 5  # an offset after the softmax: finite, out of range
    scores[4] *= 0.5  # a scaled map: inside [0, 1], but the classes no longer sum to 1
    assert guard.check(scores).tolist() == [False, True, True, True, True, False]
    assert guard.describe(scores[1]) == "segmenter output 'pixel_scores': 1 NaN values (of 512)"
    assert "1 +Inf values" in guard.describe(scores[2])
    assert "512 values below 0 (lowest -4.9" in guard.describe(scores[3])
    assert "class probabilities sum to 0.5..0.5 instead of 1 at 256 of 256 pixels" in guard.describe(scores[4])
    # FP16 engines round a little past the ends: tolerated.
    half = _probabilities(2).astype(np.float16)
    half[0, 1, 0, 0], half[0, 0, 0, 0] = 1.0005, 0.0
    assert not guard.check(half).any()
    rec = OutputGuard("recognizer", "block_scores", (2, 2))
    blocks = np.full((3, 2, 2), 0.2, np.float32)
    blocks[1, 0, 1] = -1e-6  # rounding: fine
    blocks[2, 1, 1] = 1.5
    assert rec.check(blocks).tolist() == [False, False, True]
    assert "1 values above 1 (highest 1.5)" in rec.describe(blocks[2])


def test_health_counts_faulty_frames_in_a_sliding_window_and_stays_unhealthy():
    alarms: list[Alarm] = []
    health = EngineHealth(alarms.append)
    quick = HealthConfig(max_faulty_frames=3, window_s=0.2)
    assert not health.fault(quick, Reason.BAD_OUTPUT, 2, "first two")
    time.sleep(0.3)  # both leave the window
    assert not health.fault(quick, Reason.ERROR, 1, "a third, alone in the window")
    assert not health.unhealthy and not alarms
    patient = HealthConfig(max_faulty_frames=4, window_s=60)  # a reload changed it: counted afresh
    assert not health.fault(patient, Reason.BAD_OUTPUT, 2, "two")
    assert health.fault(patient, Reason.ERROR, 2, "four within a minute")
    (alarm,) = alarms
    assert health.unhealthy and alarm.reason is Reason.ERROR and alarm.faulty_frames == 4
    assert alarm.totals == {"bad_output": 4, "error": 3} and alarm.detail == "four within a minute"
    assert not health.fault(patient, Reason.ERROR, 100, "more")  # sticky: no second alarm
    assert health.unhealthy and len(alarms) == 1 and health.totals["error"] == 103


# ------------------------------------------------------------------------------------- the real daemon


def test_a_nan_segmenter_rejects_what_the_healthy_one_rejects(tmp_path):
    """NaN on the frames with a defect (where it hurts: NaN compared with a threshold is false, so they passed)."""
    bright = [False, True, False, True, True, False, False, True]
    images = _images(tmp_path, bright)
    rec, seg = _models(tmp_path)
    _, healthy, _ = _run(_config(tmp_path, (rec, seg), _folder(images)))
    assert [v["result"] == "reject" for v in healthy] == bright
    assert {v["reason"] for v in healthy} == {"ok", "defect"}

    nan_seg = poison(seg, tmp_path / "models" / "nan-segmenter.onnx", "Mul", NAN, when="defect")
    _, verdicts, samples = _run(_config(tmp_path, (rec, nan_seg), _folder(images), NEVER_UNHEALTHY))
    for was, now in zip(healthy, verdicts, strict=True):
        if was["result"] == "reject":
            assert now["result"] == "reject" and now["reason"] == "bad_output" and not now["inspected"]
            assert now["detail"] == "segmenter output 'pixel_scores': 8192 NaN values (of 8192)"
            assert now["defects"] == [] and now["recognizer_score"] is None and now["segmenter_ran"]
        else:
            assert (now["result"], now["reason"]) == ("pass", "ok")
    assert total(samples, "inspector_frames_dropped_total", cause="bad_output") == sum(bright)
    assert total(samples, "inspector_verdicts_total", result="reject", reason="bad_output") == sum(bright)
    assert total(samples, "inspector_engine_healthy") == 1


def test_a_recognizer_offset_out_of_range_is_a_reject_even_with_failsafe_pass(tmp_path):
    """-5 added to the recognizer's scores: every frame passed with recognizer_score 0.0. Now each frame it hits is
    a bad_output reject, even on a line that lets uninspected parts pass (failsafe_result: pass)."""
    bright = [False, True, True, False, True]
    images = _images(tmp_path, bright)
    rec, seg = _models(tmp_path)
    shifted = poison(rec, tmp_path / "models" / "shifted-recognizer.onnx", "Add", -5.0, when="defect")
    config = _config(tmp_path, (shifted, seg), _folder(images), NEVER_UNHEALTHY, pipeline=", failsafe_result: pass")
    _, verdicts, _ = _run(config)
    for b, v in zip(bright, verdicts, strict=True):
        if b:
            assert (v["result"], v["reason"]) == ("reject", "bad_output")
            assert v["detail"].startswith("recognizer output 'block_scores': 4 values below 0 (lowest -4")
            assert not v["segmenter_ran"]  # gated: a frame the recognizer failed on is not segmented
        else:
            assert (v["result"], v["reason"]) == ("pass", "ok")


def test_a_non_finite_recognizer_still_gives_one_verdict_per_frame_and_logs_are_rate_limited(
    tmp_path, caplog, monkeypatch
):
    """NaN recognizer scores on every frame with a defect, the segmenter on every frame, batches of 4: each acquired
    frame gets exactly one verdict; the error log says it once per interval, with how many it did not say."""
    monkeypatch.setattr("inspector.pipeline.ERROR_LOG_INTERVAL_S", 0.3)
    caplog.set_level(logging.ERROR, logger="inspector.pipeline")
    bright = [i % 3 != 0 for i in range(12)]
    images = _images(tmp_path, bright)
    rec, seg = _models(tmp_path)
    nan_rec = poison(rec, tmp_path / "models" / "nan-recognizer.onnx", "Mul", NAN, when="defect")
    source = _folder(images, loop=True, rate_hz=40)
    config = _config(tmp_path, (nan_rec, seg), source, NEVER_UNHEALTHY, mode="always", pipeline=", batch_size: 4")
    _, verdicts, samples = _run(config, max_frames=72)
    assert len(verdicts) == 72
    bad = [v for v in verdicts if v["reason"] == "bad_output"]
    assert len(bad) == sum(bright) * 6
    assert all(v["result"] == "reject" and "4 NaN values" in v["detail"] for v in bad)
    assert all(v["reason"] == "ok" for v in verdicts if v["reason"] != "bad_output")
    assert total(samples, "inspector_frames_acquired_total") == 72
    assert total(samples, "inspector_frames_dropped_total", cause="bad_output") == len(bad)

    lines = [r.getMessage() for r in caplog.records if "bad network output" in r.getMessage()]
    assert 1 <= len(lines) < len(bad)
    said = [int(m.group(1)) for line in lines if (m := re.search(r"\(and (\d+) more in (\d+) frames since", line))]
    assert said, lines  # 72 frames at 40/s take 1.8 s: the interval of 0.3 s passed with faults in it
    assert len(lines) + sum(said) <= len(bad)  # each bad frame is logged or counted, at most once


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: a bound unix datagram socket, collecting what the daemon sends."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.05)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.extend(self.sock.recv(4096).decode().splitlines())
            except TimeoutError:
                continue

    def count(self, line: str) -> int:
        return self.messages.count(line)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _wait(predicate, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_repeated_bad_outputs_make_the_engine_unhealthy_alarm_metric_and_no_more_watchdog(
    tmp_path, monkeypatch, caplog
):
    """Twelve good parts, then six with a defect the NaN segmenter cannot score, round and round: the third bad frame
    within the window makes the engine unhealthy. From then on every part is rejected (the good ones too), the
    alarm is on the broadcast stream, the gauge reads 0, and the watchdog pings stop while frames still move."""
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 100 ms while healthy
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    caplog.set_level(logging.ERROR)
    images = _images(tmp_path, [False] * 12 + [True] * 6)
    rec, seg = _models(tmp_path)
    nan_seg = poison(seg, tmp_path / "models" / "nan-segmenter.onnx", "Mul", NAN, when="defect")
    extra = "health: {max_faulty_frames: 3, window_s: 60}\n"
    config = _config(
        tmp_path, (rec, nan_seg), _folder(images, loop=True, rate_hz=20), extra, pipeline=", batch_size: 1"
    )
    daemon, sub = _start(config)
    try:
        sub.wait_for(lambda: sub.events("alarm"), timeout_s=60)
        (alarm,) = sub.events("alarm")
        assert alarm["alarm"] == "engine_unhealthy" and alarm["reason"] == "bad_output"
        assert alarm["faulty_frames"] == 3 and alarm["window_s"] == 60
        assert alarm["totals"] == {"bad_output": 3, "error": 0}
        assert "segmenter output 'pixel_scores'" in alarm["detail"] and alarm["watchdog"] is True
        assert total(scrape(daemon.metrics_port), "inspector_engine_healthy") == 0
        pinged = notify.count("WATCHDOG=1")
        assert pinged >= 2  # pinged while the good parts went through

        # Frames keep moving (a whole round of good and bad parts), yet no ping comes any more.
        time.sleep(0.5)  # a ping that had passed its health check just before the alarm may still land
        pinged = notify.count("WATCHDOG=1")
        decided = daemon.pipeline.counters.decided
        _wait(lambda: daemon.pipeline.counters.decided >= decided + 14)
        assert notify.count("WATCHDOG=1") == pinged
        assert any(m.startswith("STATUS=engine unhealthy") for m in notify.messages)
    finally:
        daemon.stop()
        rc = daemon.wait()
        sub.close()
        notify.close()
    assert rc == 0
    verdicts = sub.verdicts()
    assert [v["seq"] for v in verdicts] == list(range(daemon.pipeline.counters.acquired))
    bad = [i for i, v in enumerate(verdicts) if v["reason"] == "bad_output"]
    first_bad = bad[0]
    assert verdicts[first_bad - 1]["result"] == "pass"  # healthy, the good parts passed
    after = verdicts[bad[2] + 1 :]
    assert len(after) >= 14 and all(v["result"] == "reject" and v["reason"] == "bad_output" for v in after)
    assert all("engine unhealthy" in v["detail"] and "until the service restarts" in v["detail"] for v in after)
    assert alarm["last_seq"] is not None and alarm["last_seq"] >= bad[1]
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and "engine unhealthy" in critical[0].getMessage()


# ------------------------------------------------------------------------------------ start-up refuses


@pytest.mark.parametrize(
    ("role", "op", "value", "said"),
    [
        ("segmenter", "Mul", NAN, "pixel_scores: 8192 NaN values (of 8192)"),
        ("recognizer", "Add", INF, "block_scores: 4 +Inf values (of 4)"),
        ("recognizer", "Add", -5.0, "block_scores: 4 values below 0 (lowest -5"),
        ("segmenter", "Mul", 0.5, "pixel_scores: class probabilities sum to 0.5..0.5 instead of 1"),
    ],
    ids=["segmenter-nan", "recognizer-inf", "recognizer-minus-5", "segmenter-halved"],
)
def test_check_config_refuses_a_model_whose_blank_frame_outputs_are_not_probabilities(tmp_path, role, op, value, said):
    rec, seg = _models(tmp_path)
    models = {"recognizer": rec, "segmenter": seg}
    models[role] = poison(models[role], tmp_path / "models" / f"bad-{role}.onnx", op, value)
    config = _config(tmp_path, (models["recognizer"], models["segmenter"]), _folder(_images(tmp_path, [False])))
    problems = check_config(config)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{config}: models.{role} ({models[role]}): on a blank frame, {said}"), problems
    assert "scores must be probabilities in [0, 1]" in problems[0]
    if role == "segmenter" and math.isnan(value):  # start-up is the same check, with the model exit status
        with pytest.raises(StartupError) as exc:
            Daemon(config, console=False, install_signals=False).start()
        assert exc.value.code == 3 and said in str(exc.value)
