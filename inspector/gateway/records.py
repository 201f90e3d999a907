"""What the gateway hands to its PLC-side sinks: one `Record` per part the PLC must act on, the `GatewayState`,
and the `Sink` protocol an OPC UA, Modbus (or later EtherNet/IP, PROFINET) server implements.

A record is either a daemon verdict as received (with the gateway's own judgement added: stale or not, and the
effective `reject`), or a record the gateway makes for a part that has no verdict: `lost` (a seq that never
arrived) or `camera_drop` (a frame the camera lost, reported by the next verdict's camera_drops_before).
`reject` is what the PLC acts on: true unless the daemon passed the part and the verdict arrived in time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Protocol

# Reason codes for PLCs (Modbus, OPC UA ReasonCode). Daemon reasons keep their names (docs/PROTOCOL.md); 16+ are
# made by the gateway. A reason this table does not know (a newer daemon) is UNKNOWN_REASON: treat it as error.
REASON_CODES: dict[str, int] = {
    "ok": 0,
    "defect": 1,
    "overload": 2,
    "timeout": 3,
    "error": 4,
    "bad_frame": 5,
    "shutdown": 6,
    "bad_output": 7,
    "lost": 16,
    "camera_drop": 17,
}
UNKNOWN_REASON = 255
REASON_MEANINGS: dict[str, str] = {
    "ok": "inspected, nothing rejecting found (pass)",
    "defect": "inspected, a defect reached its minimum area (reject)",
    "overload": "not inspected: the daemon's frame ring was full (fail-safe)",
    "timeout": "not inspected within pipeline.deadline_ms (fail-safe)",
    "error": "inference or decision failed (fail-safe)",
    "bad_frame": "the frame cannot be inspected (fail-safe)",
    "shutdown": "in flight when the daemon stopped (fail-safe)",
    "bad_output": "a network output was not a probability (NaN, Inf, out of range), or engine unhealthy (reject)",
    "lost": "gateway: this seq never arrived (reject)",
    "camera_drop": "gateway: the camera lost this frame, no picture (reject)",
}
NOT_INSPECTED_REASONS = ("overload", "timeout", "error", "bad_frame", "shutdown", "bad_output")


class Flag(IntFlag):
    """Bits of a record's FLAGS word (Modbus record register 6, OPC UA Flags)."""

    REJECT = 1  # act on this: eject the part
    INSPECTED = 2  # the networks looked at the frame
    DAEMON_REJECT = 4  # the daemon's own result was reject
    LOST = 8  # made by the gateway: no verdict arrived for this part (reason lost or camera_drop)
    STALE = 16  # arrived later than gateway.max_age_ms after acquisition
    FRAME_ID_INFERRED = 32  # camera_frame_id worked out from the neighbouring verdicts (a lost record)
    FRAME_ID_UNKNOWN = 64  # camera_frame_id unknown (a lost record between verdicts with camera drops)
    VALID = 128  # the slot holds a record (0 in a slot never written)


FLAG_MEANINGS: dict[Flag, str] = {
    Flag.REJECT: "eject this part (the daemon rejected it, or the verdict is lost, stale or has no picture)",
    Flag.INSPECTED: "the networks inspected the frame (reason ok or defect)",
    Flag.DAEMON_REJECT: "the daemon's own result was reject",
    Flag.LOST: "made by the gateway: no verdict arrived for this part (reason lost or camera_drop)",
    Flag.STALE: "the verdict arrived later than gateway.max_age_ms after acquisition",
    Flag.FRAME_ID_INFERRED: "FRAME_ID inferred from the neighbouring verdicts (lost record, no camera drops between)",
    Flag.FRAME_ID_UNKNOWN: "FRAME_ID unknown (reads 0xFFFFFFFF): match this part by timing, or reject parts around it",
    Flag.VALID: "the slot holds a record",
}


@dataclass(frozen=True, slots=True)
class Record:
    record_no: int  # the gateway's own counter, from 0 at gateway start, +1 per record
    run_id: str  # the daemon process the verdict came from ("" from a daemon older than run ids)
    run_index: int  # 1 for the first daemon run this gateway saw, +1 per restart
    seq: int | None  # daemon seq; None for a camera_drop record
    camera_frame_id: int | None  # None when unknown
    frame_id_inferred: bool
    reject: bool  # effective: what the PLC acts on
    daemon_result: str | None  # "pass" / "reject" as the daemon said; None for gateway-made records
    reason: str
    inspected: bool
    stale: bool
    lost: bool  # made by the gateway (reason lost or camera_drop)
    defect_count: int
    defect_classes: tuple[str, ...]  # distinct classes, in the verdict's order (largest blob first)
    recognizer_score: float | None
    acquired_ns: int | None
    decided_ns: int | None
    received_ns: int  # when the gateway received the verdict (or made the record), wall clock
    config_hash: str
    detail: str | None = None

    @property
    def reason_code(self) -> int:
        return REASON_CODES.get(self.reason, UNKNOWN_REASON)

    @property
    def age_ms(self) -> float | None:
        """Acquisition to reception at the gateway."""
        return None if self.acquired_ns is None else (self.received_ns - self.acquired_ns) / 1e6

    @property
    def flags(self) -> Flag:
        f = Flag.VALID
        if self.reject:
            f |= Flag.REJECT
        if self.inspected:
            f |= Flag.INSPECTED
        if self.daemon_result == "reject":
            f |= Flag.DAEMON_REJECT
        if self.lost:
            f |= Flag.LOST
        if self.stale:
            f |= Flag.STALE
        if self.frame_id_inferred:
            f |= Flag.FRAME_ID_INFERRED
        if self.camera_frame_id is None:
            f |= Flag.FRAME_ID_UNKNOWN
        return f


@dataclass
class Counters:
    """Since the gateway started. Every count is of records or verdicts, never of messages on the wire."""

    verdicts: int = 0  # daemon verdicts received and published as records
    records: int = 0  # records published (verdicts + lost + camera_drop)
    passes: int = 0  # records with reject false
    rejects: int = 0  # records with reject true (daemon rejects, lost, stale, camera drops)
    not_inspected: dict[str, int] = field(default_factory=lambda: {r: 0 for r in (*NOT_INSPECTED_REASONS, "other")})
    lost: int = 0  # seq numbers that never arrived (also beyond max_lost_records)
    gaps: int = 0  # times a run of seq numbers was found missing
    stale: int = 0  # verdicts marked stale
    restarts: int = 0  # daemon restarts (run id changes) seen
    camera_drops: int = 0  # frames the camera lost (camera_drops_before)
    duplicates: int = 0  # verdicts with a seq already published or reported lost: not published again
    malformed: int = 0  # messages that are not a verdict of this camera: not published


@dataclass
class GatewayState:
    line: str
    camera: str
    daemon_connected: bool = False  # the actuator channel has a live ZeroMQ connection
    daemon_alive: bool = False  # connected, and a verdict or event arrived within gateway.daemon.silence_ms
    daemon_stopped: bool = False  # the daemon announced a clean stop (until it sends again)
    last_message_ns: int | None = None  # wall clock of the last verdict or event
    last_heartbeat_ns: int | None = None  # wall clock of the last heartbeat event (reception)
    run_id: str = ""
    run_index: int = 0
    last_seq: int | None = None  # last seq published (verdict or lost record) in this run
    config_hash: str = ""
    gateway_healthy: bool = True  # every sink serving, the gateway's loop on time
    gap_seen: bool = False  # a gap within gateway.status_hold_ms
    restart_seen: bool = False  # a restart within gateway.status_hold_ms
    stale_seen: bool = False  # a stale verdict within gateway.status_hold_ms
    ticks: int = 0  # +1 per gateway tick (its own heartbeat)
    counters: Counters = field(default_factory=Counters)

    @property
    def healthy(self) -> bool:
        return self.daemon_alive and self.gateway_healthy


@dataclass(frozen=True, slots=True)
class Notice:
    """Something a human or SCADA should hear about: restart, gap, daemon stopped/lost/back."""

    kind: str  # restart | gap | stale | daemon_stopped | daemon_silent | daemon_alive | daemon_disconnected
    message: str
    severity: int  # OPC UA severity 1..1000
    run_id: str = ""  # the daemon run it concerns (the new one, for a restart)


class Sink(Protocol):
    """A PLC-side server. Everything runs on the gateway's event loop; no method may wait on a client."""

    name: str

    async def start(self) -> None:
        """Bind and listen. Raise SinkError with a one-line message if it cannot."""

    async def publish(self, records: Sequence[Record], state: GatewayState) -> None:
        """Make these records (in order) and the state visible to clients, at once."""

    async def update_state(self, state: GatewayState) -> None:
        """Called every tick (50 ms): refresh status, counters and heartbeat."""

    async def notice(self, notice: Notice) -> None:
        """Tell clients about a restart, gap or change of the daemon's state (where the protocol can)."""

    @property
    def healthy(self) -> bool:
        """Serving clients."""

    async def stop(self) -> None:
        """Close listeners and connections."""


class SinkError(RuntimeError):
    """A sink cannot start. str() is the message; `code` the exit status: 2 for a file the config names (password,
    key, certificate), 4 for a port that cannot be bound."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code
