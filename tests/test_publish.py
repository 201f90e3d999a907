"""The ZeroMQ publisher over real sockets on 127.0.0.1: schema, ordering, the actuator channel, back-pressure."""

from __future__ import annotations

import io
import json
import re
import threading
import time

import pytest
import zmq

from inspector.config import PublishConfig, SocketConfig
from inspector.frames import Defect, Reason, Verdict
from inspector.metrics import Metrics
from inspector.publish import (
    EVENT_SCHEMA,
    VERDICT_SCHEMA,
    Publisher,
    PublisherError,
    format_verdict_line,
    listen,
    verdict_message,
)

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
TOPIC = "line7/camA"


def _cfg(actuator: bool = True, hwm: int = 10_000, linger_ms: int = 200) -> PublishConfig:
    # No actuator age limit here: on a loaded box a test verdict can be seconds old when it is sent, and only the
    # stale tests are about that (they set it).
    return PublishConfig(
        actuator_max_age_ms=None,
        broadcast=SocketConfig(bind="tcp://127.0.0.1:0", sndhwm=hwm, linger_ms=linger_ms),
        actuator=SocketConfig(bind="tcp://127.0.0.1:0", sndhwm=hwm, linger_ms=linger_ms) if actuator else None,
    )


def _verdict(seq: int, reason: Reason = Reason.OK, defects: list[Defect] | None = None) -> Verdict:
    now = time.time_ns()
    return Verdict(
        seq=seq,
        camera_frame_id=1000 + seq,
        result="pass" if reason is Reason.OK else "reject",
        reason=reason,
        t_acquired_ns=now - 5_000_000,
        t_decided_ns=now,
        defects=defects or [],
        recognizer_score=0.123456 if reason.inspected else None,
        segmenter_ran=bool(defects),
        camera_drops_before=seq % 3,
        config_hash="cafe0123",
        model_hashes={"recognizer": "aa11", "segmenter": "bb22"},
        t_acquired_mono_ns=time.monotonic_ns() - 5_000_000,
    )


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _subscriber(ctx: zmq.Context, pub: Publisher, prefix: str = "") -> zmq.Socket:
    """A SUB that is proven to receive: PUB drops whatever is sent before a subscription reaches it."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.setsockopt_string(zmq.SUBSCRIBE, prefix)
    sub.connect(pub.broadcast_endpoint)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pub.event("sync")
        if sub.poll(50):
            while sub.poll(20):  # discard the sync events
                sub.recv_multipart()
            return sub
    raise AssertionError("subscriber never joined")


def _recv_json(sock: zmq.Socket, timeout_ms: int = 3000) -> tuple[str, dict]:
    assert sock.poll(timeout_ms), "nothing received"
    topic, payload = sock.recv_multipart()
    return topic.decode(), json.loads(payload)


def test_verdict_message_schema():
    v = _verdict(5, Reason.DEFECT, [Defect("scratch", 140, (10, 20, 30, 4), 0.91234567)])
    msg = verdict_message(v, "line7", "camA")
    assert msg["schema"] == VERDICT_SCHEMA
    assert (msg["line"], msg["camera"], msg["seq"], msg["camera_frame_id"]) == ("line7", "camA", 5, 1005)
    assert (msg["result"], msg["reason"], msg["inspected"]) == ("reject", "defect", True)
    assert msg["acquired_ns"] == v.t_acquired_ns and msg["decided_ns"] == v.t_decided_ns
    assert ISO.match(msg["acquired"]) and ISO.match(msg["decided"])
    # The ISO field is the same instant as the ns field, to the microsecond.
    from datetime import datetime, timezone

    parsed = datetime.strptime(msg["decided"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs(parsed.timestamp() * 1e9 - v.t_decided_ns) < 2_000
    assert msg["timestamp_source"] == "host" and msg["device_timestamp_ns"] is None
    assert msg["defects"] == [{"class": "scratch", "area_px": 140, "bbox": [10, 20, 30, 4], "score": 0.9123}]
    assert msg["recognizer_score"] == 0.1235
    assert msg["segmenter_ran"] is True and msg["camera_drops_before"] == 2
    assert msg["config_hash"] == "cafe0123" and msg["model_hashes"] == {"recognizer": "aa11", "segmenter": "bb22"}
    json.dumps(msg, allow_nan=False)  # plain JSON types only

    timeout = verdict_message(_verdict(6, Reason.TIMEOUT), "l", "c")
    assert timeout["inspected"] is False and timeout["recognizer_score"] is None and timeout["reason"] == "timeout"


def test_every_verdict_reaches_a_subscriber_in_order(ctx):
    metrics = Metrics("line7", "camA")
    pub = Publisher(_cfg(actuator=False), TOPIC, metrics)
    pub.start()
    try:
        sub = _subscriber(ctx, pub, f"{TOPIC}/")
        n = 300
        for i in range(n):
            pub.submit(
                _verdict(
                    i,
                    Reason.DEFECT if i % 5 == 0 else Reason.OK,
                    [Defect("pit", 12, (1, 2, 3, 4), 0.7)] if i % 5 == 0 else None,
                )
            )
        got = [_recv_json(sub) for _ in range(n)]
    finally:
        pub.close()
    assert [m["seq"] for _, m in got] == list(range(n))
    assert {t for t, _ in got} == {f"{TOPIC}/verdict"}
    assert all(m["schema"] == VERDICT_SCHEMA and m["line"] == "line7" and m["camera"] == "camA" for _, m in got)
    # One run id for the whole process, on every verdict; another publisher (a restarted daemon) gets another.
    assert {m["run_id"] for _, m in got} == {pub.run_id} and len(pub.run_id) == 32
    assert Publisher(_cfg(actuator=False), TOPIC, None).run_id != pub.run_id
    assert pub.published == n and pub.dropped == 0
    g = metrics.registry.get_sample_value
    assert (
        g("inspector_verdicts_total", {"line": "line7", "camera": "camA", "result": "reject", "reason": "defect"}) == 60
    )
    assert g("inspector_verdicts_total", {"line": "line7", "camera": "camA", "result": "pass", "reason": "ok"}) == 240
    assert g("inspector_defects_total", {"line": "line7", "camera": "camA", "class": "pit"}) == 60
    assert g("inspector_latency_seconds_count", {"line": "line7", "camera": "camA"}) == n
    # Each verdict was acquired ~5 ms before submit: none can have a latency below that.
    assert g("inspector_latency_seconds_bucket", {"line": "line7", "camera": "camA", "le": "0.003"}) == 0


def test_events_are_versioned_and_ordered_with_verdicts(ctx):
    pub = Publisher(_cfg(actuator=False), TOPIC, None)
    pub.start()
    try:
        sub = _subscriber(ctx, pub)
        pub.submit(_verdict(0))
        pub.event("reload", result="ok", config_hash="beef")
        pub.submit(_verdict(1))
        msgs = [_recv_json(sub) for _ in range(3)]
    finally:
        pub.close()
    assert [t for t, _ in msgs] == [f"{TOPIC}/verdict", f"{TOPIC}/event", f"{TOPIC}/verdict"]
    ev = msgs[1][1]
    assert ev["schema"] == EVENT_SCHEMA and ev["kind"] == "reload" and ev["result"] == "ok"
    assert ev["config_hash"] == "beef" and ISO.match(ev["time"]) and isinstance(ev["time_ns"], int)
    assert ev["run_id"] == pub.run_id == msgs[0][1]["run_id"]
    assert pub.events_published >= 1 and pub.published == 2


def test_topic_subscription_does_not_match_a_longer_camera_name(ctx):
    pub10 = Publisher(_cfg(actuator=False), "line7/camA0", None)
    pub10.start()
    try:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt_string(zmq.SUBSCRIBE, f"{TOPIC}/")
        sub.connect(pub10.broadcast_endpoint)
        time.sleep(0.2)
        for i in range(20):
            pub10.submit(_verdict(i))
        assert not sub.poll(300)
    finally:
        pub10.close()


def test_actuator_tracks_a_real_receiver_and_counts_undelivered(ctx):
    metrics = Metrics("line7", "camA")
    pub = Publisher(_cfg(), TOPIC, metrics)
    pub.start()
    g = metrics.registry.get_sample_value
    labels = {"line": "line7", "camera": "camA"}
    try:
        assert pub.actuator_peers == 0 and g("inspector_actuator_connected", labels) == 0
        # Nobody is there: every verdict is undelivered, and submit still returns at once.
        for i in range(5):
            pub.submit(_verdict(i))
        _wait(lambda: pub.published == 5)
        assert (
            pub.actuator_undelivered == 5
            and g("inspector_actuator_undelivered_total", {**labels, "cause": "no_receiver"}) == 5
        )

        gateway = ctx.socket(zmq.PULL)
        gateway.connect(pub.actuator_endpoint)
        assert pub.wait_actuator_peers(1, 5)
        _wait(lambda: g("inspector_actuator_connected", labels) == 1)
        for i in range(5, 15):
            pub.submit(_verdict(i, Reason.DEFECT))
        got = [_recv_json(gateway) for _ in range(10)]
        assert [m["seq"] for _, m in got] == list(range(5, 15))
        assert all(t == f"{TOPIC}/verdict" and m["schema"] == VERDICT_SCHEMA for t, m in got)
        assert pub.actuator_sent == 10 and pub.actuator_undelivered == 5

        gateway.close(linger=0)
        assert pub.wait_actuator_peers(0, 5), "disconnect not noticed"
        _wait(lambda: g("inspector_actuator_connected", labels) == 0)
        for i in range(15, 18):
            pub.submit(_verdict(i))
        _wait(lambda: pub.published == 18)
        assert (
            pub.actuator_undelivered == 8
            and g("inspector_actuator_undelivered_total", {**labels, "cause": "no_receiver"}) == 8
        )
    finally:
        pub.close()


def test_a_plain_tcp_connection_is_not_a_receiver():
    import socket

    pub = Publisher(_cfg(), TOPIC, None)
    pub.start()
    try:
        host, port = pub.actuator_endpoint.removeprefix("tcp://").rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
        time.sleep(0.3)
        assert pub.actuator_peers == 0  # no ZMTP handshake, no receiver
        s.close()
    finally:
        pub.close()


def test_submit_never_blocks_and_counts_drops_when_the_queue_is_full(ctx):
    release, stalled, resumed = threading.Event(), threading.Event(), threading.Event()

    class StalledMetrics(Metrics):
        # Stalls the publisher thread inside its first publish, as a stuck socket or CPU starvation would, until
        # the test releases it.
        def verdict_published(self, v, latency_s):
            stalled.set()
            release.wait(60)
            resumed.set()
            super().verdict_published(v, latency_s)

    metrics = StalledMetrics("line7", "camA")
    pub = Publisher(_cfg(actuator=False), TOPIC, metrics, queue_size=16)
    pub.start()
    try:
        sub = _subscriber(ctx, pub)
        pub.submit(_verdict(0))
        assert stalled.wait(30)  # the thread took it and is stuck in publishing it
        accepted = sum(pub.submit(_verdict(i)) for i in range(1, 1001))
        # Never blocks: all 1000 returned while the publisher thread was still stuck; a submit that waited for
        # room would still be waiting. Not timed: on a loaded machine any call can take 100 ms.
        assert not resumed.is_set(), "submit waited for the publisher thread"
        assert accepted == 16 and pub.dropped == 1000 - 16
        assert (
            metrics.registry.get_sample_value(
                "inspector_verdicts_dropped_total", {"line": "line7", "camera": "camA", "cause": "queue_full"}
            )
            == 1000 - 16
        )
        release.set()
        got = [m["seq"] for m in _recv_verdicts(sub, 17)]
        assert got == list(range(17))
    finally:
        release.set()
        pub.close()
    assert pub.published + pub.dropped == 1001  # acquired == published + dropped


def test_close_drains_the_queue_before_closing(ctx):
    pub = Publisher(_cfg(actuator=False), TOPIC, None)
    pub.start()
    sub = _subscriber(ctx, pub)
    n = 2000
    for i in range(n):
        assert pub.submit(_verdict(i))
    pub.close(timeout_s=10)
    assert pub.published == n and pub.dropped == 0
    seqs = []
    # Until all n are in (a loaded machine may pause longer than any short poll); the heartbeat events the
    # publisher sent meanwhile are not verdicts.
    while len(seqs) < n and sub.poll(30_000):
        topic, payload = sub.recv_multipart()
        if topic.endswith(b"/verdict"):
            seqs.append(json.loads(payload)["seq"])
    assert seqs == list(range(n))
    assert not pub.submit(_verdict(n)) and pub.dropped == 1  # after close: counted, not lost silently


def test_bind_failure_is_reported_by_start(ctx):
    taken = ctx.socket(zmq.PUB)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    cfg = PublishConfig(broadcast=SocketConfig(bind=f"tcp://127.0.0.1:{port}"), actuator=None)
    with pytest.raises(PublisherError, match=rf"broadcast socket to tcp://127.0.0.1:{port}"):
        Publisher(cfg, TOPIC, None).start()
    cfg = PublishConfig(
        broadcast=SocketConfig(bind="tcp://127.0.0.1:0"), actuator=SocketConfig(bind=f"tcp://127.0.0.1:{port}")
    )
    with pytest.raises(PublisherError, match="actuator socket"):
        Publisher(cfg, TOPIC, None).start()


@pytest.mark.parametrize("as_json", [True, False])
def test_listen_prints_each_verdict(as_json):
    pub = Publisher(_cfg(actuator=False), TOPIC, None)
    pub.start()
    out = io.StringIO()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(listen(pub.broadcast_endpoint, TOPIC, 5, as_json, out, 5.0)))
    t.start()
    try:
        seq = 0
        # The listener joins at some point of a running stream, like an integrator's would.
        while t.is_alive() and seq < 2000:
            pub.submit(_verdict(seq, Reason.DEFECT, [Defect("crack", 77, (5, 6, 7, 8), 0.8)]))
            pub.event("noise")  # events are not verdicts: never printed
            seq += 1
            time.sleep(0.005)
        t.join(5)
    finally:
        pub.close()
    assert result == [5]
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    if as_json:
        msgs = [json.loads(line) for line in lines]
        assert all(m["schema"] == VERDICT_SCHEMA for m in msgs)
        seqs = [m["seq"] for m in msgs]
        assert seqs == list(range(seqs[0], seqs[0] + 5))
    else:
        assert all("line7/camA" in line and "REJECT" in line and "reason=defect" in line for line in lines)
        assert "crack 77px@5,6" in lines[0]


def test_format_verdict_line_shows_what_an_operator_needs():
    msg = verdict_message(_verdict(3, Reason.TIMEOUT), "l1", "c1")
    msg["detail"] = "not decided within 1000 ms"
    line = format_verdict_line(msg)
    assert "seq=3" in line and "REJECT" in line and "reason=timeout" in line and "decided_in=5.0ms" in line
    assert "detail='not decided within 1000 ms'" in line


def _wait(cond, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_protocol_doc_matches_the_wire_schema():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text()
    example = json.loads(
        re.search(r"```json\n(\{\n  \"schema\": \"inspector.verdict/1\".*?\n\})\n```", doc, re.S).group(1)
    )
    wire = verdict_message(_verdict(1, Reason.DEFECT, [Defect("scratch", 1, (0, 0, 1, 1), 0.5)]), "l", "c")
    assert set(example) == set(wire)
    assert set(example["defects"][0]) == set(wire["defects"][0])
    # Every field is explained in the table (a row starting with the field name in backticks).
    documented = set(re.findall(r"^\| `([a-z_]+)`", doc, re.M)) | {
        n
        for row in re.findall(r"^\| (`[a-z_]+`(?:, `[a-z_]+`)+) \|", doc, re.M)
        for n in re.findall(r"`([a-z_]+)`", row)
    }
    assert set(wire) - {"schema", "line", "camera"} <= documented


# ------------------------------------------------------------------------------- encoding is total (issue 10)


def _pull(ctx: zmq.Context, pub: Publisher) -> zmq.Socket:
    gateway = ctx.socket(zmq.PULL)
    gateway.setsockopt(zmq.LINGER, 0)
    gateway.connect(pub.actuator_endpoint)
    assert pub.wait_actuator_peers(1, 10)
    return gateway


def test_non_finite_and_numpy_scores_are_encoded_as_null_or_numbers(ctx):
    import numpy as np

    nan_defect = Defect("scratch", 5, (1, 2, 3, 4), np.float32("nan"))
    verdicts = [
        Verdict(**{**_verdict_fields(0), "recognizer_score": float("nan")}),
        Verdict(**{**_verdict_fields(1), "recognizer_score": np.float32("inf"), "defects": (nan_defect,)}),
        Verdict(
            **{
                **_verdict_fields(2),
                "recognizer_score": np.float64(0.25),
                "defects": (Defect("x", 1, (0, 0, 1, 1), np.float32(0.5)),),
            }
        ),
    ]
    metrics = Metrics("line7", "camA")
    pub = Publisher(_cfg(), TOPIC, metrics)
    pub.start()
    try:
        sub = _subscriber(ctx, pub)
        gateway = _pull(ctx, pub)
        for v in verdicts:
            pub.submit(v)
        on_wire = _recv_verdicts(sub, len(verdicts))
        on_actuator = [_recv_json(gateway)[1] for _ in verdicts]
    finally:
        pub.close()
    assert on_wire == on_actuator
    assert [m["recognizer_score"] for m in on_wire] == [None, None, 0.25]
    assert on_wire[1]["defects"][0]["score"] is None and on_wire[2]["defects"][0]["score"] == 0.5
    assert all(m["reason"] == "ok" and m["seq"] == i for i, m in enumerate(on_wire))  # the full verdicts
    assert pub.encode_failed == 0 and pub.published == 3


def _recv_verdicts(sub: zmq.Socket, n: int) -> list[dict]:
    """The next n verdicts on a broadcast subscriber (events skipped)."""
    got: list[dict] = []
    while len(got) < n:
        topic, msg = _recv_json(sub)
        if topic.endswith("/verdict"):
            got.append(msg)
    return got


def _verdict_fields(seq: int) -> dict:
    v = _verdict(seq)
    return {f: getattr(v, f) for f in Verdict.__slots__}


@pytest.mark.parametrize("failsafe", ["reject", "pass"])
def test_a_verdict_that_cannot_be_encoded_goes_out_as_the_minimal_failsafe_verdict(ctx, caplog, failsafe):
    metrics = Metrics("line7", "camA")
    pub = Publisher(_cfg(), TOPIC, metrics, failsafe_result=failsafe)
    pub.start()
    n = 40
    try:
        sub = _subscriber(ctx, pub)
        gateway = _pull(ctx, pub)
        with caplog.at_level("ERROR", logger="inspector.publish"):
            for i in range(n):
                # Something unforeseen: an object no encoder knows, in a field the pipeline fills.
                pub.submit(Verdict(**{**_verdict_fields(i), "model_hashes": {"recognizer": object()}}))
            pub.submit(_verdict(n))  # and a healthy one after them
            on_wire = _recv_verdicts(sub, n + 1)
            on_actuator = [_recv_json(gateway)[1] for _ in range(n + 1)]
    finally:
        pub.close()
    assert on_wire == on_actuator  # every frame has exactly one verdict, on both sockets
    assert [m["seq"] for m in on_wire] == list(range(n + 1))
    for m in on_wire[:n]:
        assert m["schema"] == VERDICT_SCHEMA and (m["line"], m["camera"], m["run_id"]) == ("line7", "camA", pub.run_id)
        assert m["camera_frame_id"] == 1000 + m["seq"]
        assert (m["result"], m["reason"], m["inspected"]) == (failsafe, "error", False)
        assert m["detail"].startswith("verdict could not be encoded: TypeError")
        assert isinstance(m["acquired_ns"], int) and ISO.match(m["acquired"])
    assert on_wire[n]["reason"] == "ok" and on_wire[n]["model_hashes"] == {"recognizer": "aa11", "segmenter": "bb22"}
    assert pub.published == n + 1 and pub.dropped == 0 and pub.encode_failed == n and pub.actuator_sent == n + 1
    g = metrics.registry.get_sample_value
    labels = {"line": "line7", "camera": "camA"}
    assert g("inspector_verdicts_encode_failed_total", labels) == n
    assert g("inspector_verdicts_total", {**labels, "result": failsafe, "reason": "error"}) == n
    # Logged, but not once per frame.
    logged = [r for r in caplog.records if "could not be encoded" in r.getMessage()]
    assert 1 <= len(logged) < n // 4


def test_the_minimal_verdict_survives_a_verdict_with_unreadable_fields():
    from inspector.publish import minimal_verdict

    class Broken:
        seq = 2**80  # outside the wire's 64-bit integers
        camera_frame_id = "not a number"

        @property
        def t_acquired_ns(self):
            raise RuntimeError("boom")

    record, payload = minimal_verdict(Broken(), "l", "c", "r", "reject", "why")
    msg = json.loads(payload)
    assert (msg["seq"], msg["camera_frame_id"], msg["acquired_ns"], msg["result"]) == (None, None, None, "reject")
    assert record.reason is Reason.ERROR and record.result == "reject"


# ------------------------------------------------------------------------------- stale verdicts (issue 10)


def _aged(seq: int, age_ms: float, mono: bool = True) -> Verdict:
    v = _verdict(seq)
    v.t_acquired_ns = time.time_ns() - int(age_ms * 1e6)
    v.t_acquired_mono_ns = time.monotonic_ns() - int(age_ms * 1e6) if mono else 0
    return v


def test_a_verdict_older_than_the_actuator_max_age_is_not_sent_to_it_but_counted(ctx):
    cfg = _cfg().model_copy(update={"actuator_max_age_ms": 5000.0, "heartbeat_ms": 50})
    metrics = Metrics("line7", "camA")
    pub = Publisher(cfg, TOPIC, metrics)
    pub.start()
    try:
        sub = _subscriber(ctx, pub)
        gateway = _pull(ctx, pub)
        # Fresh, stale (monotonic age), fresh, stale by the wall clock (a verdict without a monotonic stamp).
        pub.submit_all([_aged(0, 0), _aged(1, 30_000), _aged(2, 10), _aged(3, 30_000, mono=False), _aged(4, 0)])
        on_wire = _recv_verdicts(sub, 5)
        on_actuator = [_recv_json(gateway)[1]["seq"] for _ in range(3)]
        assert not gateway.poll(300)
        _wait(lambda: pub.actuator_stale == 2)
        # The heartbeat tells a gateway how many it will never get, and why.
        while True:
            _, msg = _recv_json(sub)
            if msg.get("kind") == "heartbeat" and msg["last_seq"] == 4:
                break
    finally:
        pub.close()
    assert [m["seq"] for m in on_wire] == [0, 1, 2, 3, 4]  # the broadcast stream still has every verdict
    assert on_actuator == [0, 2, 4]
    assert (msg["published"], msg["actuator_sent"], msg["actuator_undelivered"], msg["actuator_stale"]) == (5, 3, 0, 2)
    g = metrics.registry.get_sample_value
    labels = {"line": "line7", "camera": "camA"}
    assert g("inspector_actuator_undelivered_total", {**labels, "cause": "stale"}) == 2
    assert g("inspector_actuator_undelivered_total", {**labels, "cause": "no_receiver"}) == 0


def test_without_a_max_age_old_verdicts_still_go_to_the_actuator(ctx):
    pub = Publisher(_cfg().model_copy(update={"actuator_max_age_ms": None}), TOPIC, None)
    pub.start()
    try:
        gateway = _pull(ctx, pub)
        pub.submit(_aged(0, 60_000))
        assert _recv_json(gateway)[1]["seq"] == 0
    finally:
        pub.close()
    assert pub.actuator_stale == 0


def test_listen_reports_a_daemon_restart_and_not_a_gap(capsys):
    first = Publisher(_cfg(actuator=False), TOPIC, None)
    first.start()
    port = first.broadcast_endpoint.rsplit(":", 1)[1]
    out = io.StringIO()
    t = threading.Thread(target=lambda: listen(first.broadcast_endpoint, TOPIC, 8, True, out, 20.0), daemon=True)
    t.start()

    def stream(pub: Publisher, until) -> None:
        seq = 0
        deadline = time.monotonic() + 30
        while not until() and time.monotonic() < deadline:
            pub.submit(_verdict(seq))
            seq += 1
            time.sleep(0.01)

    try:
        stream(first, lambda: len(out.getvalue().splitlines()) >= 3)
    finally:
        first.close()
    # The daemon restarts on the same address: a new run id, seq from 0 again.
    cfg = PublishConfig(broadcast=SocketConfig(bind=f"tcp://127.0.0.1:{port}", linger_ms=200), actuator=None)
    second = Publisher(cfg, TOPIC, None)
    second.start()
    try:
        stream(second, lambda: not t.is_alive())
        t.join(10)
    finally:
        second.close()
    msgs = [json.loads(line) for line in out.getvalue().splitlines()]
    runs = [m["run_id"] for m in msgs]
    assert len(msgs) == 8 and set(runs) == {first.run_id, second.run_id}
    err = capsys.readouterr().err
    assert f"the daemon restarted (run_id {first.run_id} -> {second.run_id})" in err
    assert "missed" not in err  # seq going back to the start of a new run is not a loss


# ------------------------------------------------------------------------ one receiver; CURVE (issue 10)


def _events(sub: zmq.Socket, kind: str, until, timeout_s: float = 10.0) -> list[dict]:
    """Events of `kind` on a broadcast subscriber until `until(events)` holds."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while not until(got):
        assert time.monotonic() < deadline, f"no {kind} event as expected: {got}"
        if sub.poll(100):
            msg = json.loads(sub.recv_multipart()[1])
            if msg.get("kind") == kind:
                got.append(msg)
    return got


def test_a_second_actuator_receiver_is_refused_and_alarmed(ctx):
    metrics = Metrics("line7", "camA")
    pub = Publisher(_cfg(), TOPIC, metrics)
    pub.start()
    g = metrics.registry.get_sample_value
    labels = {"line": "line7", "camera": "camA"}
    try:
        sub = _subscriber(ctx, pub)
        first = _pull(ctx, pub)
        # A second PULL (another process on the host, a monitor wired to the wrong socket): refused at its
        # handshake, so it never takes a verdict, and an event and a metric say so.
        second = ctx.socket(zmq.PULL)
        second.setsockopt(zmq.LINGER, 0)
        second.connect(pub.actuator_endpoint)
        refused = _events(sub, "actuator", lambda ev: any(e["state"] == "refused" for e in ev))[-1]
        assert (refused["cause"], refused["receivers"], refused["address"]) == ("second_receiver", 1, "127.0.0.1")
        assert refused["run_id"] == pub.run_id
        _wait(lambda: g("inspector_actuator_refused_total", {**labels, "cause": "second_receiver"}) == 1)
        for i in range(20):
            pub.submit(_verdict(i))
        assert [_recv_json(first)[1]["seq"] for _ in range(20)] == list(range(20))  # every one, to the first
        assert not second.poll(300)
        assert pub.actuator_peers == 1 and pub.actuator_sent == 20

        # Once the first has gone, a receiver that connects again is let in (libzmq does not retry a refused
        # handshake by itself: the client reconnects, as inspector gateway does).
        first.close(linger=0)
        assert pub.wait_actuator_peers(0, 10)
        second.disconnect(pub.actuator_endpoint)
        second.connect(pub.actuator_endpoint)
        assert pub.wait_actuator_peers(1, 10)
        pub.submit(_verdict(20))
        assert _recv_json(second)[1]["seq"] == 20
    finally:
        pub.close()


@pytest.fixture
def keys(tmp_path):
    from inspector.curve import generate

    generate(tmp_path / "server", "server")
    generate(tmp_path / "clients", "gateway")
    generate(tmp_path / "other", "intruder")  # a valid key pair, but not among the authorised keys
    return tmp_path


def _curve_client(ctx, kind: int, endpoint: str, keys, name: str | None):
    from inspector.curve import ClientKeys

    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if name is not None:
        folder = "clients" if name == "gateway" else "other"
        ClientKeys.load(keys / folder / f"{name}.key_secret", keys / "server" / "server.key").apply(sock)
    if kind == zmq.SUB:
        sock.setsockopt_string(zmq.SUBSCRIBE, "")
    sock.connect(endpoint)
    return sock


def test_curve_lets_authorised_clients_in_and_nobody_else(ctx, keys):
    from inspector.curve import ServerKeys

    server = ServerKeys.load(keys / "server" / "server.key_secret", keys / "clients")
    metrics = Metrics("line7", "camA")
    pub = Publisher(_cfg(), TOPIC, metrics, curve=server)
    pub.start()
    g = metrics.registry.get_sample_value
    labels = {"line": "line7", "camera": "camA"}
    try:
        intruders = [
            _curve_client(ctx, zmq.SUB, pub.broadcast_endpoint, keys, "intruder"),
            _curve_client(ctx, zmq.SUB, pub.broadcast_endpoint, keys, None),  # no CURVE at all
            _curve_client(ctx, zmq.PULL, pub.actuator_endpoint, keys, "intruder"),
            _curve_client(ctx, zmq.PULL, pub.actuator_endpoint, keys, None),
        ]
        _wait(lambda: g("inspector_actuator_refused_total", {**labels, "cause": "unauthorised"}) >= 1, 10)
        sub = _curve_client(ctx, zmq.SUB, pub.broadcast_endpoint, keys, "gateway")
        pull = _curve_client(ctx, zmq.PULL, pub.actuator_endpoint, keys, "gateway")
        assert pub.wait_actuator_peers(1, 10)  # the authorised one: the intruders never counted
        seq = 0
        while not sub.poll(0):  # until the subscription has reached the PUB
            pub.submit(_verdict(seq))
            seq += 1
            assert seq < 500, "the authorised subscriber never received"
            time.sleep(0.02)
        assert _recv_json(sub)[1]["schema"] in (VERDICT_SCHEMA, EVENT_SCHEMA)
        assert [_recv_json(pull)[1]["seq"] for _ in range(seq)] == list(range(seq))
        pub.submit(_verdict(seq))
        assert _recv_json(pull)[1]["seq"] == seq
        for sock in intruders:
            assert not sock.poll(200), "an unauthorised client received something"
    finally:
        pub.close()
    assert pub.actuator_peers <= 1 and pub.actuator_refused >= 1


@pytest.mark.parametrize(
    ("what", "error"),
    [
        ("secret_644", "readable by its owner only"),
        ("clients_777", "writable by others"),
        ("missing", "cannot read"),
        ("public_as_secret", "holds no secret key"),
        ("empty_dir", "no client public key"),
    ],
)
def test_curve_keys_that_cannot_be_trusted_are_refused_with_the_file(keys, what, error):
    import os

    from inspector.curve import CurveKeyError, ServerKeys

    secret, clients = keys / "server" / "server.key_secret", keys / "clients"
    if what == "secret_644":
        os.chmod(secret, 0o644)
    elif what == "clients_777":
        os.chmod(clients, 0o777)
    elif what == "missing":
        secret = keys / "server" / "nope.key_secret"
    elif what == "public_as_secret":
        secret = keys / "server" / "server.key"
        os.chmod(secret, 0o600)
    elif what == "empty_dir":
        clients = keys / "empty"
        clients.mkdir(mode=0o755)
    with pytest.raises(CurveKeyError, match=error) as info:
        ServerKeys.load(secret, clients)
    assert str(secret if what != "clients_777" and what != "empty_dir" else clients) in str(info.value)


def test_generated_keys_are_private_and_never_overwritten(tmp_path):
    from inspector.curve import CurveKeyError, generate

    public, secret = generate(tmp_path, "line1")
    assert (public.stat().st_mode & 0o777, secret.stat().st_mode & 0o777) == (0o644, 0o600)
    before = secret.read_bytes()
    with pytest.raises(CurveKeyError, match="not overwritten"):
        generate(tmp_path, "line1")
    assert secret.read_bytes() == before


def test_listen_with_curve_keys_receives_and_a_refused_key_is_said(keys, capsys):
    from inspector.curve import ClientKeys, ServerKeys

    pub = Publisher(
        _cfg(actuator=False),
        TOPIC,
        None,
        curve=ServerKeys.load(keys / "server" / "server.key_secret", keys / "clients"),
    )
    pub.start()
    try:
        server_public = keys / "server" / "server.key"
        good = ClientKeys.load(keys / "clients" / "gateway.key_secret", server_public)
        bad = ClientKeys.load(keys / "other" / "intruder.key_secret", server_public)
        out = io.StringIO()
        result: list[int] = []
        t = threading.Thread(
            target=lambda: result.append(listen(pub.broadcast_endpoint, TOPIC, 3, True, out, 10.0, curve=good))
        )
        t.start()
        seq = 0
        while t.is_alive() and seq < 2000:
            pub.submit(_verdict(seq))
            seq += 1
            time.sleep(0.005)
        t.join(10)
        assert result == [3] and len(out.getvalue().splitlines()) == 3
        # An unauthorised key: listen says so and stops, instead of waiting in silence.
        assert listen(pub.broadcast_endpoint, TOPIC, 3, True, io.StringIO(), 30.0, curve=bad) == 0
    finally:
        pub.close()
    assert "refused this client (key not authorised)" in capsys.readouterr().err


def test_keys_generate_command(tmp_path, capsys):
    from inspector.cli import main
    from inspector.curve import ServerKeys

    assert main(["keys", "generate", str(tmp_path / "k"), "--name", "line1"]) == 0
    assert main(["keys", "generate", str(tmp_path / "clients"), "--name", "plc"]) == 0
    assert main(["keys", "generate", str(tmp_path / "k"), "--name", "line1"]) == 2  # never overwrites
    assert "not overwritten" in capsys.readouterr().err
    keys = ServerKeys.load(tmp_path / "k" / "line1.key_secret", tmp_path / "clients")
    assert len(keys.authorised) == 1 and len(keys.public) == 40


def test_the_daemon_refuses_to_start_with_a_secret_key_others_can_read(tmp_path):
    import os

    from inspector.curve import generate
    from inspector.daemon import Daemon
    from inspector.runtime import StartupError

    generate(tmp_path / "keys", "line1")
    generate(tmp_path / "keys" / "clients", "plc")
    os.chmod(tmp_path / "keys" / "line1.key_secret", 0o644)
    config = tmp_path / "line1.yaml"
    config.write_text(
        "source: {kind: synthetic}\n"
        "models: {recognizer: {path: rec.onnx}, segmenter_mode: never}\n"
        "publish:\n"
        "  broadcast: {bind: 'tcp://127.0.0.1:0'}\n"
        "  actuator: {bind: 'tcp://127.0.0.1:0'}\n"
        "  curve: {secret_key: keys/line1.key_secret, authorised_keys: keys/clients}\n"
        "metrics: {enabled: false}\n"
    )
    with pytest.raises(StartupError) as info:
        Daemon(config, console=False, install_signals=False).start()
    assert info.value.code == 2
    assert "publish.curve:" in str(
        info.value
    ) and "line1.key_secret: a secret key must be readable by its owner" in str(info.value)


def test_listen_against_a_curve_config_asks_for_a_client_key(tmp_path, capsys):
    from inspector.cli import main
    from inspector.curve import generate

    generate(tmp_path / "keys", "line1")
    generate(tmp_path / "keys" / "clients", "operator")
    config = tmp_path / "line1.yaml"
    config.write_text(
        "source: {kind: synthetic}\n"
        "models: {recognizer: {path: rec.onnx}, segmenter_mode: never}\n"
        "publish:\n"
        "  curve: {secret_key: keys/line1.key_secret, authorised_keys: keys/clients}\n"
    )
    assert main(["listen", "--config", str(config), "--count", "1", "--timeout", "0.2"]) == 2
    assert "give --client-key" in capsys.readouterr().err
    # With a key (and the daemon's public key found next to its secret key), it connects and, with no daemon
    # there, stops at the timeout.
    key = str(tmp_path / "keys" / "clients" / "operator.key_secret")
    assert main(["listen", "--config", str(config), "--client-key", key, "--count", "1", "--timeout", "0.2"]) == 0
