"""Modbus TCP sink (pymodbus): the register map PLCs poll.

The map is data: `HEADER`, `LATEST` and `RECORD` below are the only place addresses are defined; the image is
written from them, docs/PLC.md's tables are generated from them (`python -m inspector.gateway.modbus`) and a
test checks that the document matches. Every register is read-only and readable with function 3 (holding
registers) and 4 (input registers): PLCs differ in which they use. Writes and other functions are refused.

A read request is answered from the gateway's register image in one step of the event loop, so the registers
of one request are always consistent with each other (never half of one record and half of the next). 32- and
64-bit values are big-endian across registers: high word first.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from inspector.gateway.records import (
    FLAG_MEANINGS,
    REASON_CODES,
    REASON_MEANINGS,
    UNKNOWN_REASON,
    Flag,
    GatewayState,
    Notice,
    Record,
    SinkError,
)

if TYPE_CHECKING:
    from inspector.gateway.config import GatewayLineConfig

log = logging.getLogger(__name__)

MAP_VERSION = 1
UNKNOWN_U32 = 0xFFFFFFFF
NO_SCORE = 0xFFFF

Kind = Literal["u16", "u32", "u64", "bits"]
WIDTH = {"u16": 1, "bits": 1, "u32": 2, "u64": 4}


@dataclass(frozen=True)
class Field:
    name: str
    offset: int  # register offset within its block
    kind: Kind
    meaning: str
    bits: tuple[tuple[int, str, str], ...] = ()  # (bit, name, meaning) for kind "bits"

    @property
    def width(self) -> int:
        return WIDTH[self.kind]


STATUS_BITS: tuple[tuple[int, str, str], ...] = (
    (0, "DAEMON_ALIVE", "the daemon is connected and sent a verdict or event within gateway.daemon.silence_ms"),
    (1, "GATEWAY_HEALTHY", "every server of the gateway is serving and its loop is on time"),
    (2, "GAP_SEEN", "verdicts were lost within gateway.status_hold_ms (lost records were published)"),
    (3, "RESTART_SEEN", "the daemon restarted within gateway.status_hold_ms"),
    (4, "STALE_SEEN", "a stale verdict arrived within gateway.status_hold_ms"),
    (5, "DAEMON_CONNECTED", "the actuator channel to the daemon is connected"),
    (6, "DAEMON_STOPPED", "the daemon announced a clean stop and has sent nothing since"),
)

HEADER: tuple[Field, ...] = (
    Field("MAP_VERSION", 0, "u16", f"version of this register map ({MAP_VERSION})"),
    Field("HEARTBEAT", 1, "u16", "+1 every gateway.modbus.heartbeat_ms while the gateway runs (wraps at 65535)"),
    Field("STATUS", 2, "bits", "status bits", STATUS_BITS),
    Field("RING_SIZE", 3, "u16", "N, records in the ring (gateway.modbus.ring_size)"),
    Field("RECORD_SIZE", 4, "u16", "registers per record (16)"),
    Field("RING_BASE", 5, "u16", "address of ring slot 0 (64)"),
    Field("RECORD_COUNT", 6, "u32", "records written since the gateway started; the newest is RECORD_COUNT - 1"),
    Field("GATEWAY_START_ID", 8, "u16", "random per gateway start: a change means the ring and counters restarted"),
    Field("RUN_INDEX", 9, "u16", "daemon runs seen by this gateway (1 for the first; +1 per restart)"),
    Field("LAST_SEQ", 10, "u32", "seq of the newest record that has one (low 32 bits)"),
    Field("VERDICTS", 12, "u32", "daemon verdicts received"),
    Field("REJECTS", 14, "u32", "records with REJECT set (daemon rejects, lost, stale, camera drops)"),
    Field("LOST", 16, "u32", "seq numbers that never arrived"),
    Field("GAPS", 18, "u32", "runs of lost seq numbers"),
    Field("STALE", 20, "u32", "verdicts marked stale"),
    Field("NOT_INSPECTED", 22, "u32", "daemon verdicts not inspected (overload, timeout, error, bad_frame, ...)"),
    Field("RESTARTS", 24, "u32", "daemon restarts seen"),
    Field("CAMERA_DROPS", 26, "u32", "frames the camera lost (camera_drop records)"),
    Field("SILENCE_MS", 28, "u16", "ms since the last message from the daemon (saturates at 65535)"),
)
HEADER_SIZE = 32

RECORD: tuple[Field, ...] = (
    Field("RECORD_NO", 0, "u32", "record number; this slot is RECORD_NO mod N"),
    Field("SEQ", 2, "u32", "daemon seq (low 32 bits); 0xFFFFFFFF for a camera_drop record"),
    Field("FRAME_ID", 4, "u32", "camera_frame_id (low 32 bits); 0xFFFFFFFF when unknown"),
    Field("FLAGS", 6, "bits", "flags", tuple((f.bit_length() - 1, f.name or "", FLAG_MEANINGS[f]) for f in Flag)),
    Field("REASON", 7, "u16", "reason code (table below)"),
    Field("CLASS_BITS", 8, "u16", "defect classes found: bit i = gateway.modbus.defect_classes[i], bit 15 = other"),
    Field("DEFECT_COUNT", 9, "u16", "defect blobs listed in the verdict"),
    Field("SCORE", 10, "u16", "recognizer score x 10000; 0xFFFF when not inspected"),
    Field("AGE_MS", 11, "u16", "ms from acquisition to the gateway receiving the verdict (saturates); 0 if unknown"),
    Field("RUN_INDEX", 12, "u16", "RUN_INDEX of the daemon run the record belongs to"),
)
RECORD_SIZE = 16
LATEST_BASE = 32  # a copy of the newest record
RING_BASE = 64
MAX_REGISTERS = RING_BASE + 1024 * RECORD_SIZE


def _check_layout() -> None:
    for block, size in ((HEADER, HEADER_SIZE), (RECORD, RECORD_SIZE)):
        used: set[int] = set()
        for f in block:
            span = set(range(f.offset, f.offset + f.width))
            if used & span or max(span) >= size:
                raise AssertionError(f"register map: {f.name} overlaps or overflows its block")
            used |= span


_check_layout()
_HEADER = {f.name: f for f in HEADER}
# encode_record fills them in this order.
_RECORD_FIELDS = tuple(
    {f.name: f for f in RECORD}[name]
    for name in (
        "RECORD_NO", "SEQ", "FRAME_ID", "FLAGS", "REASON", "CLASS_BITS", "DEFECT_COUNT", "SCORE", "AGE_MS", "RUN_INDEX"
    )
)  # fmt: skip


def _put(image: list[int], base: int, f: Field, value: int) -> None:
    """Write one field (big-endian words) into the image; values are clipped to the field's width."""
    at = base + f.offset
    if f.width == 1:
        image[at] = value & 0xFFFF
    elif f.width == 2:
        image[at], image[at + 1] = (value >> 16) & 0xFFFF, value & 0xFFFF
    else:
        for i in range(f.width):
            image[at + i] = (value >> (16 * (f.width - 1 - i))) & 0xFFFF


class RegisterImage:
    """The registers as a flat list of u16, written by the gateway, read by the Modbus server."""

    def __init__(self, ring_size: int, class_bits: Sequence[str]):
        self.ring_size = ring_size
        self.size = RING_BASE + ring_size * RECORD_SIZE
        self.regs = [0] * self.size
        self.class_bit = {name: i for i, name in enumerate(class_bits)}
        self.start_id = random.randrange(1, 0x10000)
        self.put_header("MAP_VERSION", MAP_VERSION)
        self.put_header("RING_SIZE", ring_size)
        self.put_header("RECORD_SIZE", RECORD_SIZE)
        self.put_header("RING_BASE", RING_BASE)
        self.put_header("GATEWAY_START_ID", self.start_id)

    def put_header(self, name: str, value: int) -> None:
        _put(self.regs, 0, _HEADER[name], value)

    def get(self, base: int, f: Field) -> int:
        value = 0
        for i in range(f.width):
            value = (value << 16) | self.regs[base + f.offset + i]
        return value

    def class_bits(self, classes: Sequence[str]) -> int:
        bits = 0
        for c in classes:
            bits |= 1 << self.class_bit.get(c, 15)
        return bits

    def encode_record(self, r: Record) -> list[int]:
        """The RECORD_SIZE registers of one record (also the OPC UA LastResult/Record value)."""
        age = r.age_ms
        score = r.recognizer_score
        regs = [0] * RECORD_SIZE
        for f, value in zip(
            _RECORD_FIELDS,
            (
                r.record_no,
                UNKNOWN_U32 if r.seq is None else r.seq,
                UNKNOWN_U32 if r.camera_frame_id is None else r.camera_frame_id,
                int(r.flags),
                r.reason_code,
                self.class_bits(r.defect_classes),
                min(r.defect_count, 0xFFFF),
                NO_SCORE if score is None else max(0, min(10000, round(score * 10000))),
                0 if age is None else max(0, min(0xFFFF, round(age))),
                r.run_index,
            ),
            strict=True,
        ):
            _put(regs, 0, f, value)
        return regs

    def write_record(self, r: Record) -> None:
        regs = self.encode_record(r)
        slot_base = RING_BASE + (r.record_no % self.ring_size) * RECORD_SIZE
        self.regs[slot_base : slot_base + RECORD_SIZE] = regs
        self.regs[LATEST_BASE : LATEST_BASE + RECORD_SIZE] = regs
        self.put_header("RECORD_COUNT", r.record_no + 1)
        if r.seq is not None:
            self.put_header("LAST_SEQ", r.seq)

    def write_state(self, s: GatewayState, heartbeat: int, healthy: bool, now_ns: int) -> None:
        c = s.counters
        status = 0
        for bit, flag in enumerate(
            (
                s.daemon_alive,
                s.gateway_healthy and healthy,
                s.gap_seen,
                s.restart_seen,
                s.stale_seen,
                s.daemon_connected,
                s.daemon_stopped,
            )
        ):
            status |= int(bool(flag)) << bit
        silence = 0xFFFF if s.last_message_ns is None else (now_ns - s.last_message_ns) // 1_000_000
        for name, value in (
            ("HEARTBEAT", heartbeat),
            ("STATUS", status),
            ("RUN_INDEX", s.run_index),
            ("VERDICTS", c.verdicts),
            ("REJECTS", c.rejects),
            ("LOST", c.lost),
            ("GAPS", c.gaps),
            ("STALE", c.stale),
            ("NOT_INSPECTED", sum(c.not_inspected.values())),
            ("RESTARTS", c.restarts),
            ("CAMERA_DROPS", c.camera_drops),
            ("SILENCE_MS", max(0, min(0xFFFF, silence))),
        ):
            self.put_header(name, value)


# ------------------------------------------------------------------------------------------------- sink


class ModbusSink:
    name = "modbus"

    def __init__(self, config: GatewayLineConfig, class_bits: Sequence[str]):
        self.cfg = config.gateway.modbus
        self.image = RegisterImage(self.cfg.ring_size, class_bits)
        self._server = None
        self._heartbeat = 0
        self._last_beat = time.monotonic()
        self.port: int | None = None

    async def start(self) -> None:
        from pymodbus.constants import ExcCodes
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        image = self.image

        async def serve(fc: int, start: int, address: int, count: int, registers: list[int], values) -> ExcCodes | None:
            # Called by pymodbus for every request, before it answers from `registers` (its own copy): copy the
            # requested range from the image, in this one step of the loop, so the answer is consistent.
            if values is not None or fc not in (3, 4):
                return ExcCodes.ILLEGAL_FUNCTION
            lo = address - start
            registers[lo : lo + count] = image.regs[address : address + count]
            return None

        device = SimDevice(
            id=0,  # every unit id: PLCs differ in the one they send
            simdata=[SimData(0, count=image.size, values=0, datatype=DataType.REGISTERS, readonly=True)],
            action=serve,
        )
        self._server = ModbusTcpServer(device, address=(self.cfg.bind, self.cfg.port))
        try:
            await self._server.serve_forever(background=True)
        except RuntimeError:
            raise SinkError(
                f"Modbus TCP: cannot listen on {self.cfg.bind}:{self.cfg.port} (in use, or a port below 1024 without "
                "CAP_NET_BIND_SERVICE)",
                code=4,
            ) from None
        listener = self._server.transport
        sockets = getattr(listener, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else self.cfg.port
        log.info("Modbus TCP on %s:%d (%d-record ring)", self.cfg.bind, self.port, self.cfg.ring_size)

    async def publish(self, records: Sequence[Record], state: GatewayState) -> None:
        for r in records:
            self.image.write_record(r)
        self.image.write_state(state, self._heartbeat, self.healthy, time.time_ns())

    async def update_state(self, state: GatewayState) -> None:
        now = time.monotonic()
        if now - self._last_beat >= self.cfg.heartbeat_ms / 1000:
            self._last_beat = now
            self._heartbeat = (self._heartbeat + 1) & 0xFFFF
        self.image.write_state(state, self._heartbeat, self.healthy, time.time_ns())

    async def notice(self, notice: Notice) -> None:
        pass  # Modbus has no events: the status bits and counters carry it

    @property
    def healthy(self) -> bool:
        return self._server is not None and self._server.transport is not None

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None


# ---------------------------------------------------------------------------------------- documentation


def _addr(base: int, f: Field) -> str:
    a = base + f.offset
    return str(a) if f.width == 1 else f"{a}-{a + f.width - 1}"


def register_map_markdown() -> str:
    """The register map tables of docs/PLC.md, generated from the data above."""
    out = ["Header (addresses 0-31):", "", "| address | name | type | meaning |", "|---|---|---|---|"]
    for f in HEADER:
        out.append(f"| {_addr(0, f)} | `{f.name}` | {f.kind} | {f.meaning} |")
    out += ["", "`STATUS` bits:", "", "| bit | name | set when |", "|---|---|---|"]
    out += [f"| {b} | `{n}` | {m} |" for b, n, m in STATUS_BITS]
    out += [
        "",
        f"Record ({RECORD_SIZE} registers; the newest at {LATEST_BASE}-{LATEST_BASE + RECORD_SIZE - 1}, ring slot k at "
        f"{RING_BASE} + {RECORD_SIZE}k; offsets within the record):",
        "",
        "| offset | name | type | meaning |",
        "|---|---|---|---|",
    ]
    for f in RECORD:
        out.append(f"| {_addr(0, f)} | `{f.name}` | {f.kind} | {f.meaning} |")
    out.append(f"| {RECORD[-1].offset + 1}-{RECORD_SIZE - 1} | - | - | reserved, 0 |")
    (flags,) = [f for f in RECORD if f.name == "FLAGS"]
    out += ["", "`FLAGS` bits:", "", "| bit | name | meaning |", "|---|---|---|"]
    out += [f"| {b} | `{n}` | {m} |" for b, n, m in flags.bits]
    out += ["", "`REASON` codes:", "", "| code | reason | meaning |", "|---|---|---|"]
    out += [f"| {code} | `{name}` | {REASON_MEANINGS[name]} |" for name, code in REASON_CODES.items()]
    out.append(f"| {UNKNOWN_REASON} | - | a reason this gateway does not know (a newer daemon): treat it as `error` |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(register_map_markdown(), end="")
