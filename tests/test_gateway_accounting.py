"""The gateway's fail-safe rules (inspector.gateway.accounting), on messages written by the daemon's own encoders
(inspector.publish.verdict_message / event_message), with clocks under the test's control."""

from __future__ import annotations

import json

import pytest

from inspector.frames import Defect, Reason, Verdict
from inspector.gateway.accounting import Accounting
from inspector.gateway.config import GatewayConfig
from inspector.gateway.records import Flag
from inspector.publish import event_message, verdict_message

MS = 1_000_000
T0 = 1_750_000_000_000_000_000  # wall clock of the test's world, ns


class Clock:
    def __init__(self) -> None:
        self.wall = T0
        self.mono = 10**12

    def advance(self, ms: float) -> None:
        self.wall += int(ms * MS)
        self.mono += int(ms * MS)


def _cfg(**overrides) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {"opcua": {"allow_anonymous": True}, "daemon": {"silence_ms": 3000}, **overrides}
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _acc(clock: Clock, **overrides) -> Accounting:
    acc = Accounting(_cfg(**overrides), "line1", "cam1", wall_ns=lambda: clock.wall, mono_ns=lambda: clock.mono)
    acc.connection(True)
    return acc


def _verdict(
    clock: Clock,
    seq: int,
    *,
    run: str = "a" * 32,
    frame: int | None = None,
    result: str = "pass",
    reason: Reason = Reason.OK,
    drops: int = 0,
    age_ms: float = 5,
    defects=(),
) -> dict:
    acquired = clock.wall - int(age_ms * MS)
    v = Verdict(
        seq=seq,
        camera_frame_id=1000 + seq if frame is None else frame,
        result=result,
        reason=reason,
        t_acquired_ns=acquired,
        t_decided_ns=acquired + 3 * MS,
    )
    v.camera_drops_before = drops
    v.recognizer_score = 0.25 if reason.inspected else None
    v.defects = list(defects)
    v.config_hash = "cfg1"
    # Through JSON, exactly as the gateway receives it.
    return json.loads(json.dumps(verdict_message(v, "line1", "cam1", run)))


def _event(clock: Clock, kind: str, run: str = "a" * 32, **fields) -> dict:
    return json.loads(json.dumps(event_message(kind, "line1", "cam1", t_ns=clock.wall, run_id=run, **fields)))


def test_every_verdict_once_in_order_with_its_fields(clock):
    acc = _acc(clock)
    blob = Defect(cls="scratch", area_px=120, bbox=(1, 2, 3, 4), score=0.9)
    records = []
    for seq in range(5):
        reject = seq == 3
        records += acc.verdict(
            _verdict(
                clock,
                seq,
                result="reject" if reject else "pass",
                reason=Reason.DEFECT if reject else Reason.OK,
                defects=[blob, blob] if reject else [],
            )
        )
    assert [r.seq for r in records] == [0, 1, 2, 3, 4]
    assert [r.record_no for r in records] == [0, 1, 2, 3, 4]
    r = records[3]
    assert r.reject and r.daemon_result == "reject" and r.reason == "defect" and r.reason_code == 1
    assert r.defect_count == 2 and r.defect_classes == ("scratch",) and r.recognizer_score == 0.25
    assert r.camera_frame_id == 1003 and r.config_hash == "cfg1" and not r.stale and not r.lost
    assert r.flags == Flag.VALID | Flag.REJECT | Flag.INSPECTED | Flag.DAEMON_REJECT
    assert not records[0].reject and records[0].flags == Flag.VALID | Flag.INSPECTED
    c = acc.state.counters
    assert (c.verdicts, c.records, c.passes, c.rejects, c.lost, c.gaps) == (5, 5, 4, 1, 0, 0)


def test_a_gap_publishes_lost_rejects_with_the_frame_ids_when_they_are_certain(clock):
    acc = _acc(clock)
    acc.verdict(_verdict(clock, 10))
    records = acc.verdict(_verdict(clock, 14))
    assert [(r.seq, r.reason, r.reject, r.lost) for r in records] == [
        (11, "lost", True, True),
        (12, "lost", True, True),
        (13, "lost", True, True),
        (14, "ok", False, False),
    ]
    # No camera drop between 10 (frame 1010) and 14 (frame 1014): the lost frames are 1011..1013, exactly.
    assert [r.camera_frame_id for r in records[:3]] == [1011, 1012, 1013]
    assert all(r.frame_id_inferred and r.flags & Flag.FRAME_ID_INFERRED for r in records[:3])
    c = acc.state.counters
    assert (c.lost, c.gaps, c.rejects) == (3, 1, 3)
    assert acc.state.gap_seen
    assert [n.kind for n in acc.take_notices()] == ["gap"]


def test_a_gap_across_camera_drops_leaves_the_frame_ids_unknown(clock):
    acc = _acc(clock)
    acc.verdict(_verdict(clock, 10))  # frame 1010
    # seq 11 lost; seq 12 arrives with frame 1020: the camera dropped frames somewhere in between, not all of
    # them just before seq 12 (camera_drops_before 2 accounts for 1018, 1019 only).
    records = acc.verdict(_verdict(clock, 12, frame=1020, drops=2))
    lost = [r for r in records if r.reason == "lost"]
    drops = [r for r in records if r.reason == "camera_drop"]
    assert [r.seq for r in lost] == [11] and lost[0].camera_frame_id is None
    assert lost[0].flags & Flag.FRAME_ID_UNKNOWN
    assert [(r.camera_frame_id, r.seq, r.reject) for r in drops] == [(1018, None, True), (1019, None, True)]
    assert records[-1].seq == 12
    assert acc.state.counters.camera_drops == 2


def test_the_newest_lost_records_up_to_the_cap_but_every_loss_counted(clock):
    acc = _acc(clock, max_lost_records=5)
    acc.verdict(_verdict(clock, 0))
    records = acc.verdict(_verdict(clock, 101))
    assert [r.seq for r in records] == [96, 97, 98, 99, 100, 101]
    assert acc.state.counters.lost == 100


def test_a_restart_is_reported_and_the_new_run_must_start_at_seq_0(clock):
    acc = _acc(clock)
    for seq in range(100, 103):
        acc.verdict(_verdict(clock, seq, run="a" * 32))
    assert acc.state.run_index == 1 and acc.state.counters.restarts == 0
    # The new run's seq 0 and 1 never arrived (e.g. the gateway reconnected late): they are lost, not forgotten.
    records = acc.verdict(_verdict(clock, 2, run="b" * 32))
    assert [(r.seq, r.reason, r.run_id) for r in records] == [
        (0, "lost", "b" * 32),
        (1, "lost", "b" * 32),
        (2, "ok", "b" * 32),
    ]
    assert acc.state.counters.restarts == 1 and acc.state.restart_seen and acc.state.run_index == 2
    assert records[-1].run_index == 2
    assert "restart" in [n.kind for n in acc.take_notices()]
    # A straggler of the old run is not a new restart, and is not published.
    assert acc.verdict(_verdict(clock, 103, run="a" * 32)) == []
    assert acc.state.counters.restarts == 1 and acc.state.counters.duplicates == 1


def test_joining_a_running_daemon_reports_nothing_before_the_first_verdict(clock):
    acc = _acc(clock)
    records = acc.verdict(_verdict(clock, 5000))
    assert [r.seq for r in records] == [5000] and acc.state.counters.lost == 0


def test_a_start_event_makes_seq_0_expected(clock):
    acc = _acc(clock)
    acc.event(_event(clock, "start"))
    records = acc.verdict(_verdict(clock, 2))
    assert [r.seq for r in records] == [0, 1, 2] and acc.state.counters.lost == 2


def test_the_lost_tail_is_reported_after_the_heartbeat_names_it(clock):
    acc = _acc(clock, lost_after_ms=500)
    acc.verdict(_verdict(clock, 0))
    acc.verdict(_verdict(clock, 1))
    # The daemon says it published up to seq 3; 2 and 3 are still in flight on the other socket...
    assert acc.event(_event(clock, "heartbeat", last_seq=3)) == []
    clock.advance(100)
    assert [r.seq for r in acc.verdict(_verdict(clock, 2))] == [2]  # ...2 arrives in time
    clock.advance(350)
    assert acc.tick() == []  # 450 ms after the heartbeat: 3 may still come
    clock.advance(100)
    (lost,) = acc.tick()  # 550 ms: it did not
    assert (lost.seq, lost.reason, lost.reject, lost.camera_frame_id) == (3, "lost", True, None)
    assert acc.state.counters.lost == 1
    # ...and if it turns up after all, it is not published twice.
    assert acc.verdict(_verdict(clock, 3)) == [] and acc.state.counters.duplicates == 1
    assert [r.seq for r in acc.verdict(_verdict(clock, 4))] == [4]


def test_a_late_verdict_is_stale_and_a_reject(clock):
    acc = _acc(clock, max_age_ms=200)
    (fresh,) = acc.verdict(_verdict(clock, 0, age_ms=150))
    (late,) = acc.verdict(_verdict(clock, 1, age_ms=250))
    assert not fresh.stale and not fresh.reject
    assert late.stale and late.reject and late.daemon_result == "pass" and late.flags & Flag.STALE
    assert late.age_ms == pytest.approx(250)
    assert acc.state.counters.stale == 1 and acc.state.stale_seen
    never = _acc(clock, max_age_ms=None)
    (old,) = never.verdict(_verdict(clock, 0, age_ms=10**6))
    assert not old.stale


def test_not_inspected_verdicts_are_counted_by_reason(clock):
    acc = _acc(clock)
    for seq, reason in enumerate([Reason.OVERLOAD, Reason.TIMEOUT, Reason.TIMEOUT, Reason.OK]):
        acc.verdict(_verdict(clock, seq, result="pass" if reason.inspected else "reject", reason=reason))
    msg = _verdict(clock, 4, result="reject", reason=Reason.ERROR)
    msg["reason"], msg["inspected"] = "cosmic_ray", False  # a reason of a newer daemon
    (r,) = acc.verdict(msg)
    assert r.reason_code == 255 and r.reject
    (bad,) = acc.verdict(_verdict(clock, 5, result="reject", reason=Reason.BAD_OUTPUT))
    assert bad.reason_code == 7 and bad.reject
    ni = acc.state.counters.not_inspected
    assert (ni["overload"], ni["timeout"], ni["other"], ni["error"], ni["bad_output"]) == (1, 2, 1, 0, 1)


def test_what_is_not_a_verdict_of_this_camera_is_counted_never_published(clock):
    acc = _acc(clock)
    other = _verdict(clock, 0)
    other["camera"] = "cam2"
    broken = _verdict(clock, 0)
    broken["seq"] = "7"
    assert acc.verdict(other) == [] and acc.verdict(broken) == [] and acc.verdict(None) == []
    assert acc.verdict({"schema": "inspector.verdict/2", "seq": 0}) == []
    assert acc.state.counters.malformed == 4 and acc.state.counters.records == 0


def test_silence_and_disconnection_clear_alive_and_a_stop_is_said(clock):
    acc = _acc(clock)
    acc.verdict(_verdict(clock, 0))
    acc.tick()
    assert acc.state.daemon_alive
    clock.advance(2900)
    acc.tick()
    assert acc.state.daemon_alive
    acc.event(_event(clock, "heartbeat", last_seq=0))  # an idle line: heartbeats keep it alive
    clock.advance(2900)
    acc.tick()
    assert acc.state.daemon_alive and acc.state.last_heartbeat_ns == clock.wall - 2900 * MS
    clock.advance(200)
    acc.tick()
    assert not acc.state.daemon_alive and not acc.state.healthy
    acc.verdict(_verdict(clock, 1))
    acc.tick()
    assert acc.state.daemon_alive
    acc.connection(False)
    assert not acc.state.daemon_alive and not acc.state.daemon_connected
    acc.connection(True)
    acc.tick()
    assert acc.state.daemon_alive
    acc.event(_event(clock, "stop", reason="stopped", last_seq=1))
    assert not acc.state.daemon_alive and acc.state.daemon_stopped
    kinds = [n.kind for n in acc.take_notices()]
    assert kinds == [
        "daemon_alive",
        "daemon_silent",
        "daemon_alive",
        "daemon_disconnected",
        "daemon_alive",
        "daemon_stopped",
    ]


def test_status_bits_are_held_then_cleared(clock):
    acc = _acc(clock, status_hold_ms=1000)
    acc.verdict(_verdict(clock, 0))
    acc.verdict(_verdict(clock, 2))
    acc.tick()
    assert acc.state.gap_seen
    clock.advance(1001)
    acc.tick()
    assert not acc.state.gap_seen


def test_a_daemon_without_run_ids_restarts_when_seq_goes_down(clock):
    acc = _acc(clock)
    for seq in (50, 51, 52):
        acc.verdict(_verdict(clock, seq, run=""))
    records = acc.verdict(_verdict(clock, 0, run=""))
    assert [r.seq for r in records] == [0] and acc.state.counters.restarts == 1


def test_a_heartbeat_that_overtakes_the_verdicts_is_judged_at_its_deadline(clock):
    # The heartbeat travels on the broadcast socket, the verdicts on the actuator channel: it may come first,
    # even before the first verdict the gateway ever sees.
    acc = _acc(clock, lost_after_ms=500)
    acc.event(_event(clock, "heartbeat", last_seq=3))
    acc.verdict(_verdict(clock, 0))
    acc.verdict(_verdict(clock, 1))
    clock.advance(501)
    assert [(r.seq, r.reason) for r in acc.tick()] == [(2, "lost"), (3, "lost")]
    # With no verdict at all there is nothing to anchor on: a fresh gateway reports nothing.
    fresh = _acc(clock, lost_after_ms=500)
    fresh.event(_event(clock, "heartbeat", last_seq=3))
    clock.advance(501)
    assert fresh.tick() == [] and fresh.state.counters.lost == 0
