"""The `gateway:` section of a line config: pydantic models (the single source of truth for its defaults,
validation and documentation) and loading with the same file:line errors as the rest of the file.

The daemon keeps `gateway:` opaque (a mapping it does not read), so that it never imports this package;
`GatewayLineConfig` is the daemon's `Config` with this section typed, and is what `inspector gateway` and
`inspector check-config` validate. Config objects do no I/O: key, certificate and password files are read when
the gateway starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from inspector.config import Address, Config, _host_port, _Model, first_clash, load_config, parse_config

# Security policies offered to OPC UA clients: the names in the config and the asyncua enum member each maps to.
SECURITY_POLICIES = {
    "none": "NoSecurity",
    "basic256sha256_sign": "Basic256Sha256_Sign",
    "basic256sha256_sign_encrypt": "Basic256Sha256_SignAndEncrypt",
    "aes128sha256rsaoaep_sign": "Aes128Sha256RsaOaep_Sign",
    "aes128sha256rsaoaep_sign_encrypt": "Aes128Sha256RsaOaep_SignAndEncrypt",
    "aes256sha256rsapss_sign": "Aes256Sha256RsaPss_Sign",
    "aes256sha256rsapss_sign_encrypt": "Aes256Sha256RsaPss_SignAndEncrypt",
}
SecurityPolicy = Literal[
    "none",
    "basic256sha256_sign",
    "basic256sha256_sign_encrypt",
    "aes128sha256rsaoaep_sign",
    "aes128sha256rsaoaep_sign_encrypt",
    "aes256sha256rsapss_sign",
    "aes256sha256rsapss_sign_encrypt",
]


def _endpoint(value: str | None) -> str | None:
    if value is not None and not value.startswith(("tcp://", "ipc://")):
        raise ValueError("endpoint must start with tcp:// or ipc://")
    return value


class DaemonLinkConfig(_Model):
    actuator: str | None = Field(
        None,
        description="ZeroMQ endpoint of the daemon's actuator channel (the gateway connects a PULL socket); null = "
        "publish.actuator.bind of this file, with a wildcard address read as 127.0.0.1.",
    )
    broadcast: str | None = Field(
        None,
        description="ZeroMQ endpoint of the daemon's broadcast stream (the gateway subscribes to this camera's "
        "events: start, stop, heartbeat); null = publish.broadcast.bind of this file, wildcard read as 127.0.0.1.",
    )
    silence_ms: int = Field(
        3000,
        ge=100,
        le=600000,
        description="A daemon from which nothing (verdict or event) arrived for this long is not alive: the alive "
        "bit is cleared within silence_ms + 50 ms. At least 2x publish.heartbeat_ms, or an idle line looks dead.",
    )
    reconnect_ms: int = Field(
        100, ge=10, le=60000, description="ZeroMQ reconnect interval towards a daemon that is down or restarting."
    )
    rcvhwm: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="ZeroMQ receive high-water mark of the PULL socket (verdicts). Past it the daemon's sends fail "
        "and it counts them undelivered; the gateway reports the seq gap as lost.",
    )

    curve_client_key: str | None = Field(
        None,
        description="With publish.curve on the daemon: this gateway's CURVE key pair, a NAME.key_secret file of "
        "`inspector keys generate` (mode 600, owned by the gateway's user), whose public NAME.key is among the "
        "daemon's publish.curve.authorised_keys. Relative to this file. Required when publish.curve is set.",
    )
    curve_server_key: str | None = Field(
        None,
        description="The daemon's public key file (NAME.key). null = the NAME.key next to publish.curve.secret_key "
        "of this file. Relative to this file.",
    )

    @field_validator("actuator", "broadcast")
    @classmethod
    def _zmq_endpoint(cls, value: str | None) -> str | None:
        return _endpoint(value)


class OpcUaUserConfig(_Model):
    name: str = Field(min_length=1, max_length=64, description="User name an OPC UA client logs in with.")
    password_file: str = Field(
        description="File holding the password (first line); relative to the config file. Refused at start if "
        "world-readable (keep it 0640 root:inspector)."
    )


class OpcUaConfig(_Model):
    enabled: bool = Field(True, description="Serve results over OPC UA.")
    endpoint: str = Field(
        "opc.tcp://127.0.0.1:4840/inspector/",
        description="Endpoint URL the server listens on (host 0.0.0.0 = every interface). Loopback by default: "
        "set the interface the PLC reaches.",
    )
    namespace_uri: str = Field(
        "urn:inspector:gateway", description="Namespace URI of the gateway's nodes (docs/PLC.md, node model)."
    )
    security_policies: list[SecurityPolicy] = Field(
        default_factory=lambda: ["none"],
        min_length=1,
        description="Security policies offered: none, basic256sha256_sign, basic256sha256_sign_encrypt, "
        "aes128sha256rsaoaep_sign, aes128sha256rsaoaep_sign_encrypt, aes256sha256rsapss_sign, "
        "aes256sha256rsapss_sign_encrypt. Any but none needs certificate and private_key.",
    )
    certificate: str | None = Field(
        None, description="Server application instance certificate (DER or PEM); relative to the config file."
    )
    private_key: str | None = Field(
        None, description="Private key of the certificate (PEM or DER); refused at start if world-readable."
    )
    trusted_clients: str | None = Field(
        None,
        description="Directory of client certificates (DER or PEM). When set, only these clients may open a signed "
        "or encrypted channel, and each may log in with its certificate (X.509 identity). null = no certificate "
        "logins, and any client certificate may open a channel.",
    )
    allow_anonymous: bool = Field(
        False, description="Let clients in without a user name or certificate (read-only all the same)."
    )
    users: list[OpcUaUserConfig] = Field(
        default_factory=list, description="User name / password logins (read-only access to the results)."
    )
    max_clients: int = Field(16, ge=1, le=1000, description="Most TCP connections the server accepts at once.")
    max_queue_size: int = Field(
        1000,
        ge=1,
        le=100000,
        description="Most notifications one monitored item queues between two publish responses: a client asking "
        "for more (or for 0) gets this. A stalled client loses the oldest, never the gateway's memory.",
    )

    @field_validator("endpoint")
    @classmethod
    def _opc_tcp(cls, value: str) -> str:
        if not value.startswith("opc.tcp://"):
            raise ValueError("endpoint must start with opc.tcp://")
        return value

    @model_validator(mode="after")
    def _security_is_usable(self) -> OpcUaConfig:
        secure = [p for p in self.security_policies if p != "none"]
        if secure and not (self.certificate and self.private_key):
            raise ValueError(f"security policies {secure} need opcua.certificate and opcua.private_key")
        if self.trusted_clients and not secure:
            raise ValueError("trusted_clients needs a signed or encrypted security policy (certificate logins)")
        names = [u.name for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError(f"user names must be unique, got {names}")
        return self

    @property
    def has_logins(self) -> bool:
        return self.allow_anonymous or bool(self.users) or bool(self.trusted_clients)


class ModbusConfig(_Model):
    enabled: bool = Field(True, description="Serve the register map over Modbus TCP (docs/PLC.md).")
    bind: str = Field("127.0.0.1", description="Address the Modbus TCP server listens on (0.0.0.0 = every interface).")
    port: int = Field(502, ge=0, le=65535, description="Modbus TCP port (0 = any free port, for tests).")
    ring_size: int = Field(
        16,
        ge=1,
        le=1024,
        description="Records in the ring of the last verdicts. Make it hold what arrives between two PLC polls, "
        "with margin (at 200 parts/s and a 20 ms poll, 4 records; 16 is plenty).",
    )
    heartbeat_ms: int = Field(
        100,
        ge=10,
        le=10000,
        description="The heartbeat register counts up this often while the gateway runs; a PLC that sees it stand "
        "still for a few periods treats the gateway as down.",
    )
    defect_classes: list[str] | None = Field(
        None,
        max_length=15,
        description="Defect classes of the class bits: bit i is the i-th class, bit 15 any other class. null = the "
        "classes of the segmenter manifest named in models (without background), then 'defect' (blobs from "
        "recognizer blocks).",
    )


class GatewayConfig(_Model):
    daemon: DaemonLinkConfig = Field(
        default_factory=DaemonLinkConfig, description="How the gateway reaches the daemon, and when it is silent."
    )
    max_age_ms: float | None = Field(
        2000.0,
        gt=0,
        le=3_600_000,
        description="A verdict that reaches the gateway more than this long after its frame was acquired is "
        "stale: published with the stale flag and as a reject (the part has moved on). Set it to the time a part "
        "takes from the camera to the ejector minus the actuator's reaction time. null = never stale. Compares "
        "the verdict's acquired_ns with this host's clock: synchronise clocks if the daemon runs elsewhere.",
    )
    lost_after_ms: int = Field(
        500,
        ge=0,
        le=60000,
        description="A verdict the daemon's heartbeat says was published but that has not arrived this much later "
        "is reported lost (the gap after the last verdict, which no next verdict reveals).",
    )
    max_lost_records: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Most reject records published for one gap (the newest ones); the counters count all of it.",
    )
    status_hold_ms: int = Field(
        10000,
        ge=0,
        le=3_600_000,
        description="How long the gap, restart and stale status bits stay set after the last such event.",
    )
    opcua: OpcUaConfig = Field(default_factory=OpcUaConfig, description="OPC UA server.")
    modbus: ModbusConfig = Field(default_factory=ModbusConfig, description="Modbus TCP server.")

    def listening_addresses(self) -> list[tuple[str, str, Address]]:
        """(field, as written, address) of the servers the gateway listens on."""
        out: list[tuple[str, str, Address]] = []
        if self.opcua.enabled:
            netloc = urlsplit(self.opcua.endpoint).netloc
            host, _, port = netloc.rpartition(":")
            hp = _host_port(host, port)
            out.append(("gateway.opcua.endpoint", self.opcua.endpoint, ("tcp", *hp) if hp else ("tcp", host, None)))
        if self.modbus.enabled:
            hp = _host_port(self.modbus.bind, str(self.modbus.port))
            address: Address = ("tcp", *hp) if hp else ("tcp", self.modbus.bind, None)
            out.append(("gateway.modbus.bind/port", f"{self.modbus.bind}:{self.modbus.port}", address))
        return out

    @model_validator(mode="after")
    def _a_sink(self) -> GatewayConfig:
        if not (self.opcua.enabled or self.modbus.enabled):
            raise ValueError("enable at least one of gateway.opcua and gateway.modbus")
        # Here rather than in OpcUaConfig, so that its defaults stay constructible: anonymous is off by default and
        # a server nobody can log in to is a configuration mistake, said before anything starts.
        if self.opcua.enabled and not self.opcua.has_logins:
            raise ValueError(
                "opcua: no way for a client to log in: add opcua.users (user name and password file), "
                "opcua.trusted_clients (certificates), set opcua.allow_anonymous: true, or opcua.enabled: false"
            )
        return self


class GatewayLineConfig(Config):
    """A line config whose `gateway:` section is required and typed."""

    gateway: GatewayConfig = Field(description="The PLC gateway (docs/PLC.md).")  # type: ignore[assignment]

    @model_validator(mode="after")
    def _distinct_listeners(self) -> GatewayLineConfig:
        # The gateway's servers beside the daemon's sockets: one port taken twice fails the second bind at start
        # (or, with a wildcard and a specific host, lets a PLC reach the wrong server). Refused here, both named.
        clash = first_clash(self.listening_addresses() + self.gateway.listening_addresses())
        if clash:
            raise ValueError(clash)
        return self

    @model_validator(mode="after")
    def _actuator_on(self) -> GatewayLineConfig:
        if self.publish.actuator is None and self.gateway.daemon.actuator is None:
            raise ValueError(
                "publish.actuator is null: the gateway takes the verdicts from the actuator channel; enable it "
                "(or set gateway.daemon.actuator)"
            )
        d = self.gateway.daemon
        if self.publish.curve is not None and d.curve_client_key is None:
            raise ValueError(
                "publish.curve is set: the daemon only lets in authorised CURVE clients; set "
                "gateway.daemon.curve_client_key to this gateway's NAME.key_secret (inspector keys generate)"
            )
        if d.curve_client_key is not None and d.curve_server_key is None and self.publish.curve is None:
            raise ValueError(
                "gateway.daemon.curve_client_key needs the daemon's public key: set gateway.daemon.curve_server_key "
                "(or publish.curve of the daemon in this file)"
            )
        return self


def load_gateway_config(path: str | Path) -> GatewayLineConfig:
    """Read and validate a line config for the gateway. Raises inspector.config.ConfigError (file:line:field)."""
    return load_config(path, GatewayLineConfig)


def parse_gateway_config(text: str, file: str = "<config>") -> GatewayLineConfig:
    return parse_config(text, file, GatewayLineConfig)
