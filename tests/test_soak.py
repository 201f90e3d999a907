"""The soak and fault harness (tools/soak.py) on a few thousand frames of the real daemon, and its checks.

The end-to-end test runs the daemon as a subprocess with every fault kind and every harness event the daemon on
this branch is expected to survive, and asserts that no invariant was violated: exactly one verdict per frame,
seq in order at a real SUB and a real PULL (gaps only where the harness stalled or dropped them), no pass for a
frame that cannot be inspected, counters reconciled from the real exporter, reloads counted. No timing asserts.

Two fault kinds need daemon features of issue 10 and are only included where the daemon has them (both on main
now): poisoned outputs (NaN / out of range) need the `bad_output` reason (before it they passed), deep nesting
in a reloaded config needs the config hardening (before it the RecursionError stopped the daemon).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from soak import CONSUMER_EVENTS, HOSTILE_RELOADS, VALID_RELOADS, Checker, Consumer, Options, soak
from soak_faults import DEFAULT_WEIGHTS, KIND_NAMES, NAN, Plan, PlanSpec

from inspector.config import ConfigError, parse_config
from inspector.frames import Reason

pytestmark = pytest.mark.timeout(600)


def _daemon_refuses_deep_nesting() -> bool:
    try:
        parse_config("deep: " + "[" * 1000 + "]" * 1000 + "\n", "<probe>")
    except ConfigError:
        return True
    except RecursionError:
        return False
    return True


def _supported() -> tuple[dict[str, float], tuple[str, ...]]:
    weights = dict(DEFAULT_WEIGHTS)
    if "bad_output" not in {r.value for r in Reason}:
        weights.pop("nan")
        weights.pop("range")
    events = CONSUMER_EVENTS + VALID_RELOADS + HOSTILE_RELOADS
    if not _daemon_refuses_deep_nesting():
        events = tuple(e for e in events if e != "deep_nesting")
    return weights, events


def test_soak_with_faults_keeps_every_invariant(tmp_path):
    weights, events = _supported()
    weights = dict.fromkeys(weights, 1.0)  # every kind several times in a short run
    opt = Options(
        frames=2000,
        seed=7,
        fault_rate=0.03,
        weights=weights,
        events=events,
        event_every=120,
        stall_max_s=0.5,
        hang_s=0.4,
        deadline_ms=250,
        sub_rcvhwm=200,
        workdir=tmp_path,
        quiet=True,
    )
    report = soak(opt)
    assert report.get("error") is None, report
    assert report["ok"], (report["violations"], report["violation_examples"])
    # The faults and events really happened, and every frame's verdict is accounted for.
    injected = report["injected"]
    for kind in weights:
        assert injected[kind] > 0, kind
    assert set(report["harness_events"]) == set(events)
    d = report["daemon"]
    assert d["frames_acquired"] == opt.frames
    assert sum(d["verdicts"].values()) + d["verdicts_dropped"] == opt.frames
    assert d["reloads"].get("ok", 0) >= 2 and d["reloads"].get("invalid", 0) >= 1
    # Frames that could not be inspected got a fail-safe verdict, whatever its reason.
    for kind in ("raise", "hang", "bad_frame"):
        assert "ok" not in report["reasons_by_injected_kind"].get(kind, {}), report["reasons_by_injected_kind"]
    assert report["subscriber"]["unexplained_gaps"] == 0
    assert report["daemon_exit_status"] == 0


def _plan(frames=200, **weights) -> Plan:
    return Plan.build(
        PlanSpec(
            seed=1,
            frames=frames,
            fault_rate=0.5,
            defect_rate=0.1,
            weights=weights or dict(DEFAULT_WEIGHTS),
            hang_s=0.1,
            silence_s=0.1,
        )
    )


def test_the_plan_is_a_function_of_its_spec():
    a, b = _plan(), _plan()
    assert np.array_equal(a.kind, b.kind) and np.array_equal(a.frame_id, b.frame_id)
    assert (a.kind[:64] == 0).all()  # the run starts clean
    # A gap moves every later camera frame id by its size.
    assert a.frame_id[-1] == len(a.kind) - 1 + a.gap.sum()


def _verdict(plan: Plan, seq: int, result: str, reason: str, config_hash: str = "h") -> dict:
    return {
        "schema": "inspector.verdict/1",
        "run_id": "r",
        "seq": seq,
        "result": result,
        "reason": reason,
        "camera_frame_id": int(plan.frame_id[seq]),
        "camera_drops_before": int(plan.gap[seq]),
        "config_hash": config_hash,
    }


def test_the_checker_flags_a_pass_for_a_frame_that_cannot_pass():
    plan = _plan(nan=1.0)
    checker = Checker(plan)
    checker.valid_hashes.add("h")
    poisoned = int(np.flatnonzero(plan.kind == NAN)[0])
    clean = int(np.flatnonzero((plan.kind == 0) & ~plan.defect)[0])
    checker.verdict("sub", _verdict(plan, clean, "pass", "ok"), Counter())
    checker.verdict("sub", _verdict(plan, poisoned, "reject", "error"), Counter())
    assert not checker.violation_count
    checker.verdict("sub", _verdict(plan, poisoned, "pass", "ok"), Counter())
    assert checker.violation_count == {f"sub: pass for a frame that cannot pass ({KIND_NAMES[NAN]})": 1}
    checker.verdict("sub", _verdict(plan, clean, "pass", "ok", config_hash="refused"), Counter())
    assert "sub: verdict under a config never made valid" in checker.violation_count


def test_a_subscriber_gap_the_harness_did_not_cause_is_a_violation():
    plan = _plan()
    checker = Checker(plan)
    checker.valid_hashes.add("h")
    sub = Consumer(zmq.SUB, "tcp://127.0.0.1:1", checker, 10, tally=True)
    try:
        for seq in (0, 1, 2, 5):
            kind = int(plan.kind[seq])
            result = "reject" if KIND_NAMES[kind] in ("nan", "range", "raise", "hang", "bad_frame") else "pass"
            sub._handle(_verdict(plan, seq, result, "ok" if result == "pass" else "error"))
        assert sub.missing() == 2
        assert [g.explained_by for g in sub.stats.gaps] == [None]
        assert checker.violation_count["sub: gap with no stall or vanish to explain it"] == 1
    finally:
        sub.ctx.term()
