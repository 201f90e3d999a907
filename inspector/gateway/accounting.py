"""The fail-safe rules of docs/PROTOCOL.md ("Gateway side") and docs/PLC.md, as plain logic with no I/O.

`Accounting` takes the daemon's messages (already split into verdicts and events by the intake) and the
connection state, and turns them into `Record`s for the PLC, in order:

- every verdict of this camera once, in seq order, with `stale` set when it arrived more than max_age_ms after
  its frame was acquired (a stale verdict is a reject);
- a seq gap within one run: a `lost` reject record for each missing seq (the newest max_lost_records of them),
  with the camera frame id worked out when the verdicts on both sides show no camera drop in between;
- the tail: a heartbeat (or stop) event names the last seq the daemon published; one that has not arrived
  lost_after_ms later is reported lost too (no next verdict would ever reveal it);
- `camera_drops_before` on a verdict: a `camera_drop` reject record for each frame the camera lost;
- a new run id is a daemon restart: reported (counter, status bit, notice), seq tracking starts again;
- silence: no verdict or event for silence_ms, or the connection dropped, clears `daemon_alive`.

Clocks are injected (wall clock for ages, monotonic for timeouts) so the rules are tested without waiting.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from inspector.gateway.config import GatewayConfig
from inspector.gateway.records import NOT_INSPECTED_REASONS, GatewayState, Notice, Record

log = logging.getLogger(__name__)

VERDICT_PREFIX = "inspector.verdict/1"
EVENT_PREFIX = "inspector.event/1"
_PAST_RUNS = 8  # run ids remembered, so a late message of an old run is not taken for a new restart


class Accounting:
    def __init__(
        self,
        cfg: GatewayConfig,
        line: str,
        camera: str,
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
    ):
        self.cfg = cfg
        self.wall_ns = wall_ns
        self.mono_ns = mono_ns
        self.state = GatewayState(line=line, camera=camera)
        self.notices: list[Notice] = []  # drained by the service after each call
        self._record_no = 0
        self._run_id: str | None = None  # None until the first message with a run id
        self._past_runs: deque[str] = deque(maxlen=_PAST_RUNS)
        self._next_seq: int | None = None  # the seq expected next in this run; None = unknown (joined mid-run)
        self._last_frame: tuple[int, int] | None = None  # (seq, camera_frame_id) of the last verdict of this run
        # (seq the daemon says it has published, monotonic deadline): judged at the deadline, not on arrival, as the
        # event may overtake the verdicts (they travel on another socket) and may come before the first of them.
        self._announced: deque[tuple[int, int]] = deque(maxlen=64)
        self._last_message_mono: int | None = None
        self._gap_at = self._restart_at = self._stale_at = -(10**18)  # monotonic ns of the last such event
        self._duplicate_logged_at = -(10**18)

    # ------------------------------------------------------------------------------------------ verdicts

    def verdict(self, msg: Any) -> list[Record]:
        """One message from the actuator channel (parsed JSON). Returns the records to publish, in order."""
        now, mono = self.wall_ns(), self.mono_ns()
        parsed = self._check_verdict(msg)
        if parsed is None:
            self.state.counters.malformed += 1
            return []
        run_id, seq = parsed
        self._heard(now, mono)
        records: list[Record] = []
        if run_id != self._run_id and not self._new_run(run_id, from_start_event=False):
            self.state.counters.duplicates += 1  # a straggler of a run already replaced
            return []
        if self._run_id == "" and self._next_seq is not None and seq < self._next_seq - 1:
            # A daemon without run ids: seq going down is the only sign of a restart.
            self._new_run("", from_start_event=False, force=True)
        if self._next_seq is not None and seq < self._next_seq:
            self._count_duplicate(seq)
            return []
        frame_id = msg.get("camera_frame_id")
        frame_id = frame_id if isinstance(frame_id, int) and frame_id >= 0 else None
        if self._next_seq is not None and seq > self._next_seq:
            records += self._lost(self._next_seq, seq, now, upper_frame=frame_id, drops_at_upper=msg)
        drops = msg.get("camera_drops_before")
        if isinstance(drops, int) and drops > 0:
            records += self._camera_drops(drops, frame_id, now, msg)
        records.append(self._from_verdict(msg, run_id, seq, frame_id, now, mono))
        self._next_seq = seq + 1
        if frame_id is not None:
            self._last_frame = (seq, frame_id)
        return records

    def _check_verdict(self, msg: Any) -> tuple[str, int] | None:
        if not isinstance(msg, dict):
            return None
        schema = msg.get("schema")
        if not isinstance(schema, str) or not schema.startswith(VERDICT_PREFIX):
            return None
        if msg.get("line") != self.state.line or msg.get("camera") != self.state.camera:
            return None
        seq, result = msg.get("seq"), msg.get("result")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or result not in ("pass", "reject"):
            return None
        run_id = msg.get("run_id", "")
        return (run_id if isinstance(run_id, str) else ""), seq

    def _from_verdict(self, msg: dict, run_id: str, seq: int, frame_id: int | None, now: int, mono: int) -> Record:
        c = self.state.counters
        reason = msg.get("reason") if isinstance(msg.get("reason"), str) else "error"
        acquired = msg.get("acquired_ns") if isinstance(msg.get("acquired_ns"), int) else None
        decided = msg.get("decided_ns") if isinstance(msg.get("decided_ns"), int) else None
        stale = False
        if self.cfg.max_age_ms is not None and (acquired is None or now - acquired > self.cfg.max_age_ms * 1e6):
            stale = True  # a verdict without an acquisition time cannot be shown to be fresh
            c.stale += 1
            if mono - self._stale_at > 1e9:
                self._notice("stale", f"verdict seq {seq} arrived stale (older than {self.cfg.max_age_ms:g} ms)", 600)
            self._stale_at = mono
            self.state.stale_seen = True
        defects = msg.get("defects") if isinstance(msg.get("defects"), list) else []
        classes: list[str] = []
        for d in defects:
            name = d.get("class") if isinstance(d, dict) else None
            if isinstance(name, str) and name not in classes:
                classes.append(name)
        score = msg.get("recognizer_score")
        inspected = bool(msg.get("inspected", reason in ("ok", "defect")))
        if not inspected:
            key = reason if reason in NOT_INSPECTED_REASONS else "other"
            c.not_inspected[key] += 1
        c.verdicts += 1
        self.state.config_hash = str(msg.get("config_hash") or self.state.config_hash)
        detail = msg.get("detail")
        return self._record(
            run_id=run_id,
            seq=seq,
            camera_frame_id=frame_id,
            frame_id_inferred=False,
            reject=msg["result"] != "pass" or stale,
            daemon_result=msg["result"],
            reason=reason,
            inspected=inspected,
            stale=stale,
            lost=False,
            defect_count=len(defects),
            defect_classes=tuple(classes),
            recognizer_score=float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None,
            acquired_ns=acquired,
            decided_ns=decided,
            received_ns=now,
            config_hash=self.state.config_hash,
            detail=detail if isinstance(detail, str) else None,
        )

    def _lost(self, first: int, end: int, now: int, upper_frame: int | None = None, drops_at_upper: Any = None):
        """Reject records for seq first..end-1 (the newest max_lost_records of them)."""
        c = self.state.counters
        n = end - first
        c.lost += n
        c.gaps += 1
        self._gap_at = self.mono_ns()
        self.state.gap_seen = True
        self._notice("gap", f"{n} verdict(s) lost: seq {first}..{end - 1} of run {self._run_id or '?'}", 800)
        # Frame ids are exact when the verdicts on both sides leave no room for a camera drop in between.
        known_frame = None
        if upper_frame is not None and self._last_frame is not None:
            seq0, frame0 = self._last_frame
            drops = drops_at_upper.get("camera_drops_before", 0) if isinstance(drops_at_upper, dict) else 0
            drops = drops if isinstance(drops, int) and drops > 0 else 0
            if upper_frame - drops - frame0 == end - seq0:
                known_frame = (seq0, frame0)
        out = []
        for seq in range(max(first, end - self.cfg.max_lost_records), end):
            frame = None if known_frame is None else known_frame[1] + (seq - known_frame[0])
            out.append(self._made_record(seq, frame, frame is not None, "lost", now))
        self.state.last_seq = end - 1
        return out

    def _camera_drops(self, drops: int, frame_id: int | None, now: int, msg: dict) -> list[Record]:
        self.state.counters.camera_drops += drops
        if frame_id is None:
            return []  # nothing a PLC could match them by; counted
        first = max(frame_id - drops, frame_id - self.cfg.max_lost_records, 0)
        return [self._made_record(None, f, False, "camera_drop", now) for f in range(first, frame_id)]

    def _made_record(self, seq: int | None, frame: int | None, inferred: bool, reason: str, now: int) -> Record:
        return self._record(
            run_id=self._run_id or "",
            seq=seq,
            camera_frame_id=frame,
            frame_id_inferred=inferred,
            reject=True,
            daemon_result=None,
            reason=reason,
            inspected=False,
            stale=False,
            lost=True,
            defect_count=0,
            defect_classes=(),
            recognizer_score=None,
            acquired_ns=None,
            decided_ns=None,
            received_ns=now,
            config_hash=self.state.config_hash,
        )

    def _record(self, **fields: Any) -> Record:
        record = Record(record_no=self._record_no, run_index=self.state.run_index, **fields)
        self._record_no += 1
        c = self.state.counters
        c.records += 1
        if record.reject:
            c.rejects += 1
        else:
            c.passes += 1
        if record.seq is not None:
            self.state.last_seq = record.seq
        return record

    def _count_duplicate(self, seq: int) -> None:
        self.state.counters.duplicates += 1
        mono = self.mono_ns()
        if mono - self._duplicate_logged_at > 5e9:  # rate-limited: a replaying sender must not flood the log
            self._duplicate_logged_at = mono
            log.warning(
                "verdict seq %d arrived after seq %d was expected: already published or reported lost; dropped "
                "(%d such so far)",
                seq,
                self._next_seq,
                self.state.counters.duplicates,
            )

    # -------------------------------------------------------------------------------------------- events

    def event(self, msg: Any) -> list[Record]:
        """One message from the broadcast stream (only this camera's events are subscribed)."""
        if not isinstance(msg, dict) or not str(msg.get("schema", "")).startswith(EVENT_PREFIX):
            self.state.counters.malformed += 1
            return []
        if msg.get("line") != self.state.line or msg.get("camera") != self.state.camera:
            self.state.counters.malformed += 1
            return []
        now, mono = self.wall_ns(), self.mono_ns()
        run_id = msg.get("run_id", "")
        run_id = run_id if isinstance(run_id, str) else ""
        kind = msg.get("kind")
        if run_id in self._past_runs:
            return []  # a late event of a run already replaced
        if run_id != self._run_id and not self._new_run(run_id, from_start_event=kind == "start"):
            return []
        if kind == "start" and self._next_seq is None:
            self._next_seq = 0  # we saw this run begin: every seq from 0 must arrive
        self._heard(now, mono)
        if kind == "heartbeat":
            self.state.last_heartbeat_ns = now
        last_seq = msg.get("last_seq")
        if kind in ("heartbeat", "stop") and isinstance(last_seq, int) and last_seq >= 0:
            self._announced.append((last_seq, mono + self.cfg.lost_after_ms * 1_000_000))
        if kind == "stop":
            self.state.daemon_stopped = True
            self._set_alive(False, "daemon_stopped", f"the daemon stopped ({msg.get('reason', 'no reason given')})")
        return self.tick()

    def _new_run(self, run_id: str, from_start_event: bool, force: bool = False) -> bool:
        """A message from a run other than the current one. Returns False for a straggler of an old run."""
        if not force and run_id in self._past_runs:
            return False
        first = self._run_id is None
        previous = self._run_id
        self._run_id = run_id
        if previous is not None:
            self._past_runs.append(previous)
            self.state.counters.restarts += 1
            self._restart_at = self.mono_ns()
            self.state.restart_seen = True
            self._notice("restart", f"the daemon restarted: run {previous or '?'} -> {run_id or '?'}", 700)
        self.state.run_id = run_id
        self.state.run_index += 1
        self.state.last_seq = None
        self._last_frame = None
        self._announced.clear()
        # Seen from its start (a restart while we watched, or its start event): seq must run from 0. Joined
        # mid-run (this gateway just started): whatever came before is not ours to report.
        self._next_seq = None if first and not from_start_event else 0
        return True

    # ---------------------------------------------------------------------------------- connection, time

    def connection(self, connected: bool) -> None:
        if connected == self.state.daemon_connected:
            return
        self.state.daemon_connected = connected
        if not connected:
            self._set_alive(False, "daemon_disconnected", "the actuator channel to the daemon is down")

    def tick(self) -> list[Record]:
        """Called every 50 ms and after each event: the tail rule, silence and the held status bits."""
        mono, now = self.mono_ns(), self.wall_ns()
        records: list[Record] = []
        while self._announced and mono >= self._announced[0][1]:
            tail_seq = self._announced.popleft()[0]
            # Anchored by a verdict of this run; a gateway that has seen none cannot tell what it missed.
            if self._next_seq is not None and tail_seq >= self._next_seq:
                records += self._lost(self._next_seq, tail_seq + 1, now)
                self._next_seq = tail_seq + 1
        s = self.state
        silent = self._last_message_mono is None or mono - self._last_message_mono > self.cfg.daemon.silence_ms * 1e6
        if s.daemon_alive and silent:
            self._set_alive(False, "daemon_silent", f"nothing from the daemon for {self.cfg.daemon.silence_ms} ms")
        elif not s.daemon_alive and not silent and s.daemon_connected and not s.daemon_stopped:
            self._set_alive(True, "daemon_alive", "the daemon is alive")
        hold = self.cfg.status_hold_ms * 1e6
        s.gap_seen = mono - self._gap_at <= hold
        s.restart_seen = mono - self._restart_at <= hold
        s.stale_seen = mono - self._stale_at <= hold
        return records

    def _heard(self, now: int, mono: int) -> None:
        self.state.last_message_ns = now
        self._last_message_mono = mono
        self.state.daemon_stopped = False

    def _set_alive(self, alive: bool, kind: str, message: str) -> None:
        if self.state.daemon_alive == alive:
            return
        self.state.daemon_alive = alive
        self._notice(kind, message, 300 if alive else 900)

    def _notice(self, kind: str, message: str, severity: int) -> None:
        log.log(logging.WARNING if severity >= 600 else logging.INFO, "%s", message)
        self.notices.append(Notice(kind, message, severity, self._run_id or ""))

    def take_notices(self) -> list[Notice]:
        out, self.notices = self.notices, []
        return out
