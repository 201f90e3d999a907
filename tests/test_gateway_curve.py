"""The gateway process against a CURVE-secured daemon (publish.curve): with an authorised key it receives every
verdict and the daemon's events; with a key the daemon does not know it receives nothing and says why; and a
gateway refused because another receiver held the actuator channel gets in once that receiver has gone. The
daemon side is the real Publisher on real sockets on 127.0.0.1."""

from __future__ import annotations

import time

import pytest
import zmq
from daemon_helpers import free_port
from gateway_helpers import Proc, modbus_header, wait_until, write_line

from inspector.config import PublishConfig, SocketConfig
from inspector.curve import ServerKeys, generate
from inspector.frames import Reason, Verdict
from inspector.publish import Publisher

pytest.importorskip("asyncua")
pytest.importorskip("pymodbus")
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def ports() -> dict[str, int]:
    return {name: free_port() for name in ("broadcast", "actuator", "opcua", "modbus")}


def _verdict(seq: int) -> Verdict:
    now = time.time_ns()
    return Verdict(
        seq=seq,
        camera_frame_id=100 + seq,
        result="pass",
        reason=Reason.OK,
        t_acquired_ns=now - 1_000_000,
        t_decided_ns=now,
        recognizer_score=0.1,
        t_acquired_mono_ns=time.monotonic_ns() - 1_000_000,
    )


def _daemon(ports, curve: ServerKeys | None) -> Publisher:
    cfg = PublishConfig(
        heartbeat_ms=200,
        broadcast=SocketConfig(bind=f"tcp://127.0.0.1:{ports['broadcast']}", linger_ms=0),
        actuator=SocketConfig(bind=f"tcp://127.0.0.1:{ports['actuator']}", linger_ms=0),
    )
    pub = Publisher(cfg, "test/cam", None, curve=curve)
    pub.start()
    return pub


def _line(tmp_path, ports, client_key: str | None, curve: bool = True):
    config = write_line(tmp_path / "line.yaml", None, **ports)
    text = config.read_text()
    if curve:
        text = text.replace(
            "metrics: {enabled: false}\n",
            "  curve: {secret_key: keys/server.key_secret, authorised_keys: clients}\nmetrics: {enabled: false}\n",
        )
    if client_key is not None:
        text = text.replace(
            "daemon: {reconnect_ms: 20, silence_ms: 1000}",
            f"daemon: {{reconnect_ms: 20, silence_ms: 1000, curve_client_key: {client_key}}}",
        )
    config.write_text(text)
    return config


def start_gateway(config) -> Proc:
    # Importing asyncua and pymodbus alone can take minutes on the shared, loaded test box: a generous start.
    gw = Proc("gateway", "--config", str(config))
    try:
        gw.wait_log("ready (", 300)
    except BaseException:
        gw.kill()  # a gateway that did not come up is not left running (and retrying) after the test
        raise
    return gw


@pytest.fixture
def keys(tmp_path):
    generate(tmp_path / "keys", "server")
    generate(tmp_path / "clients", "gateway")
    generate(tmp_path / "other", "intruder")
    return ServerKeys.load(tmp_path / "keys" / "server.key_secret", tmp_path / "clients")


def _feed(pub: Publisher, port: int, n: int) -> None:
    """Verdicts until the gateway has n of them (it may join a moment after the first are sent)."""
    seq = 0

    def enough() -> bool:
        nonlocal seq
        pub.submit(_verdict(seq))
        seq += 1
        return modbus_header(port)["VERDICTS"] >= n

    wait_until(enough, 180, f"{n} verdicts at the gateway", interval_s=0.1)


def test_an_authorised_gateway_receives_every_verdict_and_the_events(tmp_path, ports, keys):
    pub = _daemon(ports, keys)
    gw = None
    try:
        gw = start_gateway(_line(tmp_path, ports, "clients/gateway.key_secret"))
        assert pub.wait_actuator_peers(1, 180), gw.log()
        _feed(pub, ports["modbus"], 20)
        h = modbus_header(ports["modbus"])
        # Events (heartbeats) came over the encrypted broadcast too: the daemon is alive, nothing was lost.
        wait_until(lambda: modbus_header(ports["modbus"])["DAEMON_ALIVE"] == 1, 120, "DAEMON_ALIVE")
        assert h["LOST"] == 0 and h["DAEMON_CONNECTED"] == 1
    finally:
        if gw is not None:
            gw.stop()
        pub.close()


def test_a_gateway_with_a_key_the_daemon_does_not_know_receives_nothing_and_says_why(tmp_path, ports, keys):
    pub = _daemon(ports, keys)
    gw = None
    try:
        gw = start_gateway(_line(tmp_path, ports, "other/intruder.key_secret"))
        gw.wait_log("is not among the daemon's authorised_keys", 180)
        for seq in range(20):
            pub.submit(_verdict(seq))
        wait_until(lambda: pub.actuator_refused >= 2, 180, "the gateway to retry and be refused again")
        h = modbus_header(ports["modbus"])
        assert h["VERDICTS"] == 0 and h["DAEMON_CONNECTED"] == 0 and pub.actuator_peers == 0
    finally:
        if gw is not None:
            gw.stop()
        pub.close()


def test_a_gateway_refused_as_a_second_receiver_gets_in_once_the_first_has_gone(tmp_path, ports):
    pub = _daemon(ports, None)
    ctx = zmq.Context()
    first = ctx.socket(zmq.PULL)
    first.setsockopt(zmq.LINGER, 0)
    first.connect(f"tcp://127.0.0.1:{ports['actuator']}")
    gw = None
    try:
        assert pub.wait_actuator_peers(1, 30)
        gw = start_gateway(_line(tmp_path, ports, None, curve=False))
        gw.wait_log("another receiver is already connected", 180)
        first.close(linger=0)
        _feed(pub, ports["modbus"], 5)  # the gateway retried on its own and now takes the verdicts
        assert pub.actuator_peers == 1
    finally:
        if gw is not None:
            gw.stop()
        pub.close()
        ctx.destroy(linger=0)


def test_start_is_refused_when_the_gateway_key_is_readable_by_others(tmp_path, ports, keys):
    import os
    import subprocess
    import sys

    config = _line(tmp_path, ports, "clients/gateway.key_secret")
    os.chmod(tmp_path / "clients" / "gateway.key_secret", 0o640)
    proc = subprocess.run(
        [sys.executable, "-m", "inspector.cli", "gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "gateway.key_secret: a secret key must be readable by its owner only" in proc.stderr


def test_a_curve_daemon_needs_the_gateway_key_in_the_config(tmp_path, ports):
    from inspector.config import ConfigError
    from inspector.gateway.config import load_gateway_config

    with pytest.raises(ConfigError, match=r"gateway\.daemon\.curve_client_key"):
        load_gateway_config(_line(tmp_path, ports, None))
    # A client key without publish.curve in the file: the daemon's public key must then be named.
    with pytest.raises(ConfigError, match="curve_server_key"):
        load_gateway_config(_line(tmp_path, ports, "gw.key_secret", curve=False))
    assert (
        load_gateway_config(_line(tmp_path, ports, "gw.key_secret")).gateway.daemon.curve_client_key == "gw.key_secret"
    )
