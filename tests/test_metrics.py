"""Metric values after a sequence of calls, and the real HTTP exporter scraped and parsed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from inspector.archive.metrics import ArchiveMetrics
from inspector.frames import Defect, Reason, Verdict
from inspector.metrics import DROP_CAUSES, STAGES, Metrics

L = {"line": "line2", "camera": "top"}


def _v(result: str, reason: Reason, classes: tuple[str, ...] = ()) -> Verdict:
    return Verdict(
        seq=0,
        camera_frame_id=0,
        result=result,
        reason=reason,
        t_acquired_ns=0,
        t_decided_ns=0,
        defects=[Defect(c, 50, (0, 0, 5, 10), 0.9) for c in classes],
    )


def _run_archive_sequence(m: Metrics) -> None:
    """The archive writer's series, in the daemon's registry as the daemon registers them."""
    a = ArchiveMetrics(m.line, m.camera, m.registry)
    a.written(52_000, 0.004)
    a.dropped("pool_full")
    a.deleted(2)
    a.usage(120, 6_000_000, 1.7e9, 50_000_000_000)
    a.limits(10 << 30, 1 << 30)
    a.available(True)
    a.pool(3, 16)


def _run_sequence(m: Metrics) -> None:
    for _ in range(10):
        m.acquired()
    m.verdict_published(_v("pass", Reason.OK), 0.004)
    m.verdict_published(_v("pass", Reason.OK), 0.004)
    m.verdict_published(_v("reject", Reason.DEFECT, ("scratch", "scratch", "pit")), 0.012)
    m.verdict_published(_v("reject", Reason.DEFECT, ("crack",)), 0.040)
    m.verdict_published(_v("reject", Reason.OVERLOAD), 0.0001)
    m.verdict_published(_v("pass", Reason.TIMEOUT), 1.2)
    m.verdict_dropped("queue_full")
    m.verdict_dropped("queue_full")
    m.verdict_dropped("closed")
    m.verdict_dropped("encode_error")
    m.drop("overload")
    m.drop("timeout")
    m.drop("timeout")
    m.camera_drops(3)
    m.camera_drops(0)
    for _ in range(4):
        m.stage("recognizer", 0.008)
    m.stage("decision", 0.0002)
    m.ring_occupancy(5, 32)
    m.capacity(24.5, 30.0)
    m.reload("ok")
    m.reload("invalid")
    m.reload("invalid")
    m.engine_info("recognizer", backend="onnxruntime", sha256="ab12", input="320x320")
    m.config_info("cafe0123")
    m.camera_connected(True)
    m.actuator_connected(False)
    m.actuator_undelivered()
    m.actuator_undelivered()


def test_values_after_a_sequence_of_calls():
    m = Metrics("line2", "top")
    _run_sequence(m)
    g = m.registry.get_sample_value
    assert g("inspector_frames_acquired_total", L) == 10
    assert g("inspector_capacity_fps", L) == 24.5 and g("inspector_source_rate_fps", L) == 30.0
    assert g("inspector_verdicts_total", {**L, "result": "pass", "reason": "ok"}) == 2
    assert g("inspector_verdicts_total", {**L, "result": "reject", "reason": "defect"}) == 2
    assert g("inspector_verdicts_total", {**L, "result": "reject", "reason": "overload"}) == 1
    assert g("inspector_verdicts_total", {**L, "result": "pass", "reason": "timeout"}) == 1
    assert g("inspector_defects_total", {**L, "class": "scratch"}) == 2
    assert g("inspector_defects_total", {**L, "class": "pit"}) == 1
    assert g("inspector_defects_total", {**L, "class": "crack"}) == 1
    # acquired == published + dropped: 6 + 4
    published = sum(
        s.value
        for fam in m.registry.collect()
        if fam.name == "inspector_verdicts"
        for s in fam.samples
        if s.name == "inspector_verdicts_total"
    )
    dropped = sum(
        g("inspector_verdicts_dropped_total", {**L, "cause": c}) for c in ("queue_full", "closed", "encode_error")
    )
    assert published + dropped == g("inspector_frames_acquired_total", L)
    assert g("inspector_frames_dropped_total", {**L, "cause": "timeout"}) == 2
    assert g("inspector_frames_dropped_total", {**L, "cause": "overload"}) == 1
    assert g("inspector_camera_dropped_frames_total", L) == 3
    # Latency histogram: 6 observations; cumulative buckets put each where it belongs.
    assert g("inspector_latency_seconds_count", L) == 6
    assert g("inspector_latency_seconds_sum", L) == pytest.approx(0.004 * 2 + 0.012 + 0.040 + 0.0001 + 1.2)
    assert g("inspector_latency_seconds_bucket", {**L, "le": "0.001"}) == 1
    assert g("inspector_latency_seconds_bucket", {**L, "le": "0.005"}) == 3
    assert g("inspector_latency_seconds_bucket", {**L, "le": "0.015"}) == 4
    assert g("inspector_latency_seconds_bucket", {**L, "le": "0.05"}) == 5
    assert g("inspector_latency_seconds_bucket", {**L, "le": "1.0"}) == 5
    assert g("inspector_latency_seconds_bucket", {**L, "le": "+Inf"}) == 6
    assert g("inspector_stage_seconds_count", {**L, "stage": "recognizer"}) == 4
    assert g("inspector_stage_seconds_sum", {**L, "stage": "recognizer"}) == pytest.approx(0.032)
    assert g("inspector_stage_seconds_bucket", {**L, "stage": "decision", "le": "0.00025"}) == 1
    assert g("inspector_ring_slots_in_use", L) == 5 and g("inspector_ring_slots", L) == 32
    assert g("inspector_reloads_total", {**L, "result": "ok"}) == 1
    assert g("inspector_reloads_total", {**L, "result": "invalid"}) == 2
    assert g("inspector_reloads_total", {**L, "result": "failed"}) == 0
    assert g("inspector_last_reload_timestamp_seconds", {**L, "result": "invalid"}) > 1.6e9
    assert (
        g(
            "inspector_engine_info",
            {**L, "role": "recognizer", "backend": "onnxruntime", "sha256": "ab12", "input": "320x320"},
        )
        == 1
    )
    assert g("inspector_config_info", {**L, "config_hash": "cafe0123"}) == 1
    assert g("inspector_camera_connected", L) == 1
    assert g("inspector_actuator_connected", L) == 0
    assert g("inspector_actuator_undelivered_total", {**L, "cause": "no_receiver"}) == 2


def test_alerting_series_exist_at_zero_before_anything_happens():
    g = Metrics("line2", "top").registry.get_sample_value
    for cause in DROP_CAUSES:
        assert g("inspector_frames_dropped_total", {**L, "cause": cause}) == 0
    for stage in STAGES:
        assert g("inspector_stage_seconds_count", {**L, "stage": stage}) == 0
    for result, reason in [("pass", "ok"), ("reject", "defect"), ("reject", "overload"), ("reject", "timeout")]:
        assert g("inspector_verdicts_total", {**L, "result": result, "reason": reason}) == 0
    # Impossible combinations are not invented.
    assert g("inspector_verdicts_total", {**L, "result": "reject", "reason": "ok"}) is None
    assert g("inspector_start_timestamp_seconds", L) > 1.6e9
    # Connection gauges are absent until reported: a synthetic source or a disabled actuator is not "down".
    assert g("inspector_camera_connected", L) is None and g("inspector_actuator_connected", L) is None


def test_instances_do_not_collide():
    a, b = Metrics("l", "a"), Metrics("l", "b")
    a.acquired()
    assert a.registry.get_sample_value("inspector_frames_acquired_total", {"line": "l", "camera": "a"}) == 1
    assert b.registry.get_sample_value("inspector_frames_acquired_total", {"line": "l", "camera": "b"}) == 0


def test_engine_info_replaces_the_previous_model_of_a_role():
    m = Metrics("line2", "top")
    m.engine_info("segmenter", sha256="old")
    m.engine_info("segmenter", sha256="new")
    g = m.registry.get_sample_value
    assert g("inspector_engine_info", {**L, "role": "segmenter", "sha256": "new"}) == 1
    assert g("inspector_engine_info", {**L, "role": "segmenter", "sha256": "old"}) is None


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


def test_exporter_serves_parsable_metrics_over_http():
    m = Metrics("line2", "top")
    port = m.serve("127.0.0.1", 0)
    try:
        assert port > 0
        _run_sequence(m)
        text = _scrape(port)
    finally:
        m.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["inspector_latency_seconds"].type == "histogram"
    assert families["inspector_frames_acquired"].type == "counter"
    assert families["inspector_ring_slots_in_use"].type == "gauge"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("inspector_frames_acquired_total", tuple(sorted(L.items())))] == 10
    key = ("inspector_verdicts_total", tuple(sorted({**L, "result": "reject", "reason": "defect"}.items())))
    assert samples[key] == 2
    assert all(name.startswith("inspector_") for name in families if not name.startswith(("python_", "process_")))
    # Closed: nothing listens on the port any more (REUSEADDR: the scrape's connection may be in TIME_WAIT).
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package: prometheus)")
def test_promtool_accepts_the_scraped_metrics():
    m = Metrics("line2", "top")
    port = m.serve("127.0.0.1", 0)
    try:
        _run_sequence(m)
        _run_archive_sequence(m)
        text = _scrape(port)
    finally:
        m.close()
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    # promtool exits 0 for clean input; lint findings (naming, missing help) make it fail with the reason.
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_serve_reports_a_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"127.0.0.1:{port}"):
            Metrics("l", "c").serve("127.0.0.1", port)


PROM_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "prometheus"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package: prometheus)")
@pytest.mark.parametrize(
    "args",
    [
        ["check", "rules", "inspector.rules.yml"],
        ["test", "rules", "inspector.rules.test.yml"],  # alerts fire (and stay quiet) on synthetic series
        ["check", "config", "prometheus.yml"],
    ],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_promtool_accepts_the_shipped_prometheus_files(args):
    proc = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=PROM_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_only_use_metrics_the_exporter_has():
    import re

    m = Metrics("line2", "top")
    _run_sequence(m)
    _run_archive_sequence(m)
    exported = {s.name for fam in m.registry.collect() for s in fam.samples}
    text = (PROM_DIR / "inspector.rules.yml").read_text()
    # Not the recording rules' own names (line_camera:inspector_...:rate1m): those are not exporter metrics.
    used = set(re.findall(r"(?<![:\w])(inspector_[a-z0-9_]+)(?![a-z0-9_:])", text))
    assert {"inspector_frames_acquired_total", "inspector_latency_seconds_bucket"} <= used
    missing = used - exported
    assert not missing, f"rules refer to metrics the exporter does not have: {sorted(missing)}"


DASHBOARD = PROM_DIR.parent / "grafana" / "inspector.json"


def _dashboard_exprs() -> list[str]:
    import json

    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    # What Grafana substitutes before the query reaches Prometheus.
    return [e.replace("$__rate_interval", "1m").replace("$line", ".*").replace("$camera", ".*") for e in exprs]


def test_dashboard_queries_only_use_metrics_the_exporter_has():
    import re

    m = Metrics("line2", "top")
    _run_sequence(m)
    _run_archive_sequence(m)
    exported = {s.name for fam in m.registry.collect() for s in fam.samples}
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15
    used = {n for e in exprs for n in re.findall(r"(?<![:\w])(inspector_[a-z0-9_]+)", e)}
    assert used - exported == set()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package: prometheus)")
def test_dashboard_queries_are_valid_promql(tmp_path):
    import yaml

    # promtool parses every expression of a rule file: wrap each dashboard query as a recording rule.
    rules = [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(_dashboard_exprs())]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
