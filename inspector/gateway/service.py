"""`inspector gateway`: one process per line config, beside the daemon, on one asyncio event loop.

Start-up, in this order (each failure is one message and an exit status, never a traceback):
  config (exit 2) -> the plc extra present (exit 3) -> sinks listening (exit 4; 2 for an unusable password,
  key or certificate file) -> ZeroMQ connections to the daemon (they connect whenever it is there) -> READY=1.
Shut-down on SIGTERM/SIGINT: STOPPING=1, stop taking verdicts, close the servers, exit 0.

The loop runs three things, none of which ever waits on a PLC client:
- the intake: verdicts and events from the daemon -> accounting -> records -> every sink, in order;
- the ticker (every 50 ms): the accounting's time rules (silence, the tail of a run, held status bits), the
  sinks' status, counters and heartbeat, and the systemd watchdog, which is pinged only while the ticker runs;
- the servers' own client handling (asyncua, pymodbus).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from inspector.config import resolve_path
from inspector.curve import ClientKeys, CurveKeyError, public_key_file
from inspector.gateway.accounting import Accounting
from inspector.gateway.config import GatewayLineConfig
from inspector.gateway.intake import Intake, connect_endpoint
from inspector.gateway.modbus import ModbusSink
from inspector.gateway.opcua import OpcUaSink
from inspector.gateway.records import Record, Sink, SinkError
from inspector.service import Notifier, Watchdog

log = logging.getLogger("inspector.gateway")

TICK_S = 0.05
LAG_LIMIT_S = 1.0  # a tick this late means the loop is starved: the gateway reports itself unhealthy

SinkFactory = Callable[[GatewayLineConfig, Path, Sequence[str]], Sink]
# The PLC-side servers, by config section. Another protocol is one more module and one more line here.
SINKS: dict[str, tuple[SinkFactory, str]] = {
    "opcua": (lambda cfg, file, classes: OpcUaSink(cfg, file, classes), "asyncua"),
    "modbus": (lambda cfg, file, classes: ModbusSink(cfg, classes), "pymodbus"),
}


class GatewayError(RuntimeError):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def defect_classes(config: GatewayLineConfig, config_file: Path) -> list[str]:
    """The classes of the CLASS_BITS: configured, or the segmenter manifest's (without background) + 'defect'."""
    configured = config.gateway.modbus.defect_classes
    if configured is not None:
        return list(configured)
    classes: list[str] = []
    seg = config.models.segmenter
    if seg is not None and config.models.segmenter_mode != "never":
        manifest = Path(f"{resolve_path(config_file, seg.path)}.manifest.json")
        try:
            classes = [c for c in json.loads(manifest.read_text())["classes"] if c != "background"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GatewayError(
                f"{config_file}: gateway.modbus.defect_classes is null and the segmenter manifest {manifest} cannot "
                f"be read for the classes ({exc}); list the classes in gateway.modbus.defect_classes",
                2,
            ) from None
    if "defect" not in classes:
        classes.append("defect")
    return classes[:15]


class Gateway:
    def __init__(self, config: GatewayLineConfig, config_file: str | Path, notifier: Notifier | None = None):
        self.config = config
        self.config_file = Path(config_file)
        self.notifier = notifier if notifier is not None else Notifier()
        g = config.gateway
        self.accounting = Accounting(g, config.line.name, config.line.camera)
        self.actuator = g.daemon.actuator or connect_endpoint(config.publish.actuator.bind)  # type: ignore[union-attr]
        self.broadcast = g.daemon.broadcast or connect_endpoint(config.publish.broadcast.bind)
        self.sinks: list[Sink] = []
        self.intake: Intake | None = None
        self._stop = asyncio.Event()
        self._failed_sinks: set[str] = set()
        self._watchdog: Watchdog | None = None

    # ------------------------------------------------------------------------------------------ start

    async def start(self) -> None:
        g = self.config.gateway
        enabled = [name for name in SINKS if getattr(g, name).enabled]
        missing = [SINKS[n][1] for n in enabled if importlib.util.find_spec(SINKS[n][1]) is None]
        if missing:
            raise GatewayError(
                f"the gateway needs {', '.join(missing)}: install the plc extra (pip install 'inspector[plc]')", 3
            )
        classes = defect_classes(self.config, self.config_file)
        curve = self._curve_keys()  # before any server starts: a key refused leaves nothing running
        for name in enabled:
            sink = SINKS[name][0](self.config, self.config_file, classes)
            try:
                await sink.start()
            except SinkError as exc:
                await self.close()
                raise GatewayError(str(exc), exc.code) from None
            self.sinks.append(sink)
        topic = self.config.topic
        self.intake = Intake(
            self.accounting,
            self.actuator,
            self.broadcast,
            topic,
            self.deliver,
            reconnect_ms=g.daemon.reconnect_ms,
            rcvhwm=g.daemon.rcvhwm,
            curve=curve,
        )
        self.intake.connect()
        self._watchdog = Watchdog(self.notifier, lambda: self.accounting.state.ticks)
        self._watchdog.start()
        self.notifier.ready(f"gateway for {topic}: {', '.join(s.name for s in self.sinks)}")
        log.info("gateway for %s ready (%s)", topic, ", ".join(s.name for s in self.sinks))

    def _curve_keys(self) -> ClientKeys | None:
        """The CURVE keys of gateway.daemon, read and checked now (exit 2 naming the file), or None."""
        d, curve = self.config.gateway.daemon, self.config.publish.curve
        if d.curve_client_key is None:
            return None
        if d.curve_server_key is not None:
            server = resolve_path(self.config_file, d.curve_server_key)
        else:
            assert curve is not None  # GatewayLineConfig requires one of the two
            server = public_key_file(resolve_path(self.config_file, curve.secret_key))
        try:
            return ClientKeys.load(resolve_path(self.config_file, d.curve_client_key), server)
        except CurveKeyError as exc:
            raise GatewayError(f"gateway.daemon: {exc}", 2) from None

    # ----------------------------------------------------------------------------------------- running

    async def deliver(self, records: list[Record]) -> None:
        """Records to every sink, in order; a sink that fails is logged and reported unhealthy, the others go on."""
        state = self.accounting.state
        for sink in self.sinks:
            try:
                await sink.publish(records, state)
                self._failed_sinks.discard(sink.name)
            except Exception:
                if sink.name not in self._failed_sinks:
                    log.exception("%s: publishing %d record(s) failed", sink.name, len(records))
                self._failed_sinks.add(sink.name)
        await self._notices()

    async def _notices(self) -> None:
        for notice in self.accounting.take_notices():
            for sink in self.sinks:
                try:
                    await sink.notice(notice)
                except Exception as exc:
                    log.warning("%s: notice failed: %s", sink.name, exc)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        state = self.accounting.state
        due = loop.time()
        while not self._stop.is_set():
            due += TICK_S
            await asyncio.sleep(max(0.0, due - loop.time()))
            lag = loop.time() - due
            if lag > LAG_LIMIT_S:
                log.warning("the gateway's loop is %.1f s late", lag)
                due = loop.time()
            state.ticks += 1
            records = self.accounting.tick()
            state.gateway_healthy = lag <= LAG_LIMIT_S and not self._failed_sinks and all(s.healthy for s in self.sinks)
            if records:
                await self.deliver(records)
            for sink in self.sinks:
                try:
                    await sink.update_state(state)
                except Exception as exc:
                    log.warning("%s: state update failed: %s", sink.name, exc)
            await self._notices()

    async def serve(self) -> None:
        """Until stop(): the intake and the ticker."""
        assert self.intake is not None
        tasks = [asyncio.create_task(self.intake.run()), asyncio.create_task(self._ticker())]
        stop = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            if t in done and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        self.notifier.stopping()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.intake is not None:
            self.intake.close()
            self.intake = None
        for sink in reversed(self.sinks):
            try:
                await sink.stop()
            except Exception as exc:
                log.warning("%s: stop failed: %s", sink.name, exc)
        self.sinks.clear()
        c = self.accounting.state.counters
        log.info(
            "gateway stopped: %d verdicts, %d records (%d rejects), %d lost in %d gaps, %d stale, %d restarts",
            c.verdicts,
            c.records,
            c.rejects,
            c.lost,
            c.gaps,
            c.stale,
            c.restarts,
        )


async def _main(config: GatewayLineConfig, config_file: Path) -> int:
    if not log.isEnabledFor(logging.DEBUG):
        # asyncua and pymodbus log every session and subscription at INFO: too much for a journal.
        for name in ("asyncua", "pymodbus"):
            logging.getLogger(name).setLevel(logging.WARNING)
    gateway = Gateway(config, config_file)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: log.warning("gateway settings change with a restart, not a reload"))
    try:
        await gateway.start()
    except GatewayError as exc:
        log.error("cannot start: %s", exc)
        return exc.code
    try:
        await gateway.serve()
    finally:
        await gateway.close()
    return 0


def run(config: GatewayLineConfig, config_file: str | Path) -> int:
    """The whole life of `inspector gateway`. Returns the exit status."""
    started = time.monotonic()
    rc = asyncio.run(_main(config, Path(config_file)))
    log.debug("gateway ran %.1f s", time.monotonic() - started)
    return rc
