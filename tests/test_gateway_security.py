"""OPC UA access control of the real gateway process, with real clients: anonymous off unless allowed, user
name and password from a file, certificate logins over an encrypted channel for trusted clients only. And the
start-up refusals an operator sees (exit status and one message): no login method, a world-readable secret, a
port in use, a missing gateway section."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from daemon_helpers import free_port
from gateway_helpers import start_gateway, write_line

pytest.importorskip("asyncua")
pytest.importorskip("pymodbus")
# A guard against a hang, not a speed limit: gateway and daemon subprocesses start slowly on a loaded machine.
pytestmark = pytest.mark.timeout(900)

APP_URI = "urn:inspector:gateway:test:cam"


def _certificate(folder: Path, name: str, uri: str, server: bool) -> tuple[Path, Path]:
    from asyncua.crypto import cert_gen
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = cert_gen.generate_private_key()
    names = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
    usage = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = cert_gen.generate_self_signed_app_certificate(key, name, {}, names, usage)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


async def _login(port: int, *, user=None, password=None, cert=None, key=None, client_uri="urn:test:client") -> str:
    """Connect, read one node, disconnect: "ok", or why the server refused (the error's name)."""
    from asyncua import Client, ua
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    client = Client(f"opc.tcp://127.0.0.1:{port}/inspector/", timeout=15)
    client.application_uri = client_uri
    if user is not None:
        client.set_user(user)
        client.set_password(password)
    if cert is not None:
        await client.set_security(
            SecurityPolicyBasic256Sha256, str(cert), str(key), mode=ua.MessageSecurityMode.SignAndEncrypt
        )
        await client.load_client_certificate(str(cert))
        await client.load_private_key(str(key))
    try:
        await client.connect()
    except Exception as exc:
        return type(exc).__name__
    try:
        ns = await client.get_namespace_index("urn:inspector:gateway")
        value = await client.get_node(ua.NodeId("test/cam/State/GatewayHealthy", ns)).read_value()
        return "ok" if isinstance(value, bool) else f"read {value!r}"
    finally:
        await client.disconnect()


def test_logins_users_and_trusted_certificates_only(tmp_path):
    ports = {name: free_port() for name in ("broadcast", "actuator", "opcua", "modbus")}
    server_cert, server_key = _certificate(tmp_path / "pki", "gateway", APP_URI, server=True)
    trusted_cert, trusted_key = _certificate(tmp_path / "clients", "plc1", "urn:test:client", server=False)
    stranger_cert, stranger_key = _certificate(tmp_path / "other", "stranger", "urn:test:client", server=False)
    trusted_dir = tmp_path / "trusted"
    trusted_dir.mkdir()
    (trusted_dir / "plc1.der").write_bytes(trusted_cert.read_bytes())
    (tmp_path / "plc.password").write_text("s3cret\n")
    (tmp_path / "plc.password").chmod(0o640)
    config = write_line(
        tmp_path / "line.yaml",
        None,
        **ports,
        opcua_extra=f"""    security_policies: [none, basic256sha256_sign_encrypt]
    certificate: {server_cert}
    private_key: {server_key}
    trusted_clients: trusted
    users: [{{name: plc, password_file: plc.password}}]
""",
    )
    gw = start_gateway(config)
    port = ports["opcua"]
    try:
        assert asyncio.run(_login(port)) == "BadIdentityTokenRejected", "anonymous must be refused by default"
        assert asyncio.run(_login(port, user="plc", password="s3cret")) == "ok"
        assert asyncio.run(_login(port, user="plc", password="wrong")) == "BadUserAccessDenied"
        assert asyncio.run(_login(port, user="nobody", password="s3cret")) == "BadUserAccessDenied"
        assert asyncio.run(_login(port, cert=trusted_cert, key=trusted_key)) == "ok"
        assert asyncio.run(_login(port, cert=stranger_cert, key=stranger_key)) != "ok"
        # systemd/inspector-gateway@.service sets MemoryDenyWriteExecute=yes: after encrypted sessions the process
        # holds no writable and executable mapping (it would be refused one under the unit).
        maps = Path(f"/proc/{gw.proc.pid}/maps")
        if maps.exists():
            assert not [m for m in maps.read_text().splitlines() if "wx" in m.split()[1]]
    finally:
        assert gw.stop() == 0, gw.log()
    assert "login refused for user 'plc'" in gw.log()


def _gateway_exit(config: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "inspector.cli", "gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr


def test_start_up_refusals_are_one_message_and_an_exit_status(tmp_path):
    ports = {name: free_port() for name in ("broadcast", "actuator", "opcua", "modbus")}
    # No way to log in: refused by validation, with file and line.
    config = write_line(tmp_path / "nologin.yaml", None, **ports, opcua_extra="")
    rc, err = _gateway_exit(config)
    assert rc == 2 and "nologin.yaml:" in err and "no way for a client to log in" in err, err
    # A password anyone can read.
    (tmp_path / "open.password").write_text("s3cret\n")
    (tmp_path / "open.password").chmod(0o644)
    config = write_line(tmp_path / "open.yaml", None, **ports,
                        opcua_extra="    users: [{name: plc, password_file: open.password}]\n")  # fmt: skip
    rc, err = _gateway_exit(config)
    assert rc == 2 and "readable by everyone" in err and "Traceback" not in err, err
    # The Modbus port taken.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = {**ports, "modbus": taken.getsockname()[1]}
        config = write_line(tmp_path / "busy.yaml", None, **busy)
        rc, err = _gateway_exit(config)
    assert rc == 4 and "cannot listen" in err and "Traceback" not in err, err
    # A line config without a gateway section.
    plain = tmp_path / "plain.yaml"
    plain.write_text("source: {kind: synthetic}\nmodels: {recognizer: {path: r.onnx}, segmenter_mode: never}\n")
    rc, err = _gateway_exit(plain)
    assert rc == 2 and "gateway: required field is missing" in err, err
