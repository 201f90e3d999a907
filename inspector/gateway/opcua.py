"""OPC UA sink (asyncua): the last result, counters and state of this camera, and one event per record.

Node model (docs/PLC.md generates its tables from RESULT_FIELDS, STATE_FIELDS and COUNTER_FIELDS below; a test
checks the document against them). NodeIds are strings, stable across restarts, so a PLC's configuration can
name them: `ns=<namespace_uri>;s=<line>/<camera>/LastResult/Reject`.

    Objects/Inspector/<line>/<camera>           emits ResultReadyEventType (every record) and GatewayNoticeEventType
        LastResult/<field>                      the newest record, one variable per field
        LastResult/Record                       UInt16[16]: the newest record in the Modbus record layout
        Counters/<counter>, Counters/NotInspected/<reason>
        State/<field>

Every record reaches a subscriber, not only the newest value a slow client samples: each one is a
ResultReadyEvent (the OPC 40100 Machine Vision concept: ResultId, IsPartial, ResultState, JobId, PartId,
InternalConfigurationId, CreationTime, plus the inspection fields), and each one is a data change of
LastResult/Record, queued per monitored item up to opcua.max_queue_size. The LastResult/<field> variables are
written once per batch (they are "the last result"); counters and state when they change.

Security: the policies in opcua.security_policies; anonymous logins only with allow_anonymous; user name logins
against password files; certificate logins for the clients in trusted_clients (who alone may then open a
signed or encrypted channel). Every node is read-only.
"""

from __future__ import annotations

import hmac
import logging
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inspector.gateway.modbus import RECORD_SIZE, RegisterImage
from inspector.gateway.records import NOT_INSPECTED_REASONS, GatewayState, Notice, Record, SinkError

if TYPE_CHECKING:
    from inspector.gateway.config import GatewayLineConfig

log = logging.getLogger(__name__)

NULL_TIME = datetime(1601, 1, 1, tzinfo=timezone.utc)  # OPC UA's null DateTime


def _time(ns: int | None) -> datetime:
    return NULL_TIME if ns is None else datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


def _result_state(r: Record) -> int:
    # OPC 40100 ResultStateDataType: 1 Completed, 4 Failed; < 0 application-specific.
    if r.reason == "lost":
        return -1
    if r.reason == "camera_drop":
        return -2
    return 1 if r.inspected else 4


@dataclass(frozen=True)
class NodeField:
    name: str
    vtype: str  # asyncua VariantType member name
    meaning: str
    value: Callable[[Any], Any]


def _result_id(r: Record) -> str:
    return f"{r.run_id}/{r.seq}" if r.seq is not None else f"{r.run_id}/frame{r.camera_frame_id}"


RESULT_FIELDS: tuple[NodeField, ...] = (
    NodeField("ResultId", "String", "OPC 40100: unique id of the result, `<run id>/<seq>`", _result_id),
    NodeField("IsPartial", "Boolean", "OPC 40100: always false (one result per frame)", lambda r: False),
    NodeField(
        "ResultState",
        "Int32",
        "OPC 40100: 1 completed (inspected), 4 failed (not inspected: fail-safe reject); gateway-made: -1 lost, "
        "-2 camera drop",
        _result_state,
    ),
    NodeField("JobId", "String", "OPC 40100: the daemon run (`run_id`; new at every daemon start)", lambda r: r.run_id),
    NodeField(
        "PartId",
        "String",
        "OPC 40100: the camera frame id, in decimal; empty when unknown",
        lambda r: "" if r.camera_frame_id is None else str(r.camera_frame_id),
    ),
    NodeField(
        "InternalConfigurationId", "String", "OPC 40100: the daemon's config hash in force", lambda r: r.config_hash
    ),
    NodeField(
        "CreationTime",
        "DateTime",
        "OPC 40100: when the verdict was made (the gateway's reception for gateway-made records)",
        lambda r: _time(r.decided_ns if r.decided_ns is not None else r.received_ns),
    ),
    NodeField("RecordNo", "UInt64", "gateway record number (Modbus RECORD_NO)", lambda r: r.record_no),
    NodeField("Seq", "Int64", "daemon seq; -1 for a camera_drop record", lambda r: -1 if r.seq is None else r.seq),
    NodeField(
        "CameraFrameId",
        "Int64",
        "camera frame id; -1 when unknown",
        lambda r: -1 if r.camera_frame_id is None else r.camera_frame_id,
    ),
    NodeField("FrameIdInferred", "Boolean", "CameraFrameId inferred for a lost record", lambda r: r.frame_id_inferred),
    NodeField("Reject", "Boolean", "**act on this**: eject the part", lambda r: r.reject),
    NodeField(
        "DaemonResult",
        "String",
        "the daemon's result, `pass` or `reject`; empty for gateway-made records",
        lambda r: r.daemon_result or "",
    ),
    NodeField(
        "Reason", "String", "reason (`ok`, `defect`, `overload`, ..., `lost`, `camera_drop`)", lambda r: r.reason
    ),
    NodeField("ReasonCode", "UInt16", "the reason's code (Modbus REASON)", lambda r: r.reason_code),
    NodeField("Inspected", "Boolean", "the networks inspected the frame", lambda r: r.inspected),
    NodeField("Stale", "Boolean", "arrived later than gateway.max_age_ms after acquisition", lambda r: r.stale),
    NodeField("Lost", "Boolean", "made by the gateway: no verdict arrived for this part", lambda r: r.lost),
    NodeField("DefectCount", "UInt32", "defect blobs in the verdict", lambda r: r.defect_count),
    NodeField(
        "DefectClasses", "String", "distinct defect classes, comma-separated", lambda r: ",".join(r.defect_classes)
    ),
    NodeField("DefectClassBits", "UInt16", "the classes as bits (Modbus CLASS_BITS)", lambda r: 0),  # set by the sink
    NodeField(
        "RecognizerScore",
        "Double",
        "highest recognizer block score; -1 when not inspected",
        lambda r: -1.0 if r.recognizer_score is None else r.recognizer_score,
    ),
    NodeField("AcquiredTime", "DateTime", "frame acquired (null time when unknown)", lambda r: _time(r.acquired_ns)),
    NodeField("DecidedTime", "DateTime", "verdict made (null time when unknown)", lambda r: _time(r.decided_ns)),
    NodeField(
        "ProcessingTimeMs",
        "Double",
        "acquired to decided, ms; -1 when unknown",
        lambda r: -1.0 if r.acquired_ns is None or r.decided_ns is None else (r.decided_ns - r.acquired_ns) / 1e6,
    ),
    NodeField(
        "AgeMs",
        "Double",
        "acquired to received by the gateway, ms; -1 when unknown",
        lambda r: -1.0 if r.age_ms is None else r.age_ms,
    ),
    NodeField("RunIndex", "UInt32", "daemon runs seen by this gateway when the record was made", lambda r: r.run_index),
    NodeField("Flags", "UInt16", "the Modbus FLAGS bits", lambda r: int(r.flags)),
    NodeField("Detail", "String", "the daemon's explanation of a fail-safe verdict", lambda r: r.detail or ""),
)

STATE_FIELDS: tuple[NodeField, ...] = (
    NodeField(
        "Healthy", "Boolean", "DaemonAlive and GatewayHealthy: inspection results are flowing", lambda s: s.healthy
    ),
    NodeField(
        "DaemonAlive", "Boolean", "connected, and a verdict or event within silence_ms", lambda s: s.daemon_alive
    ),
    NodeField("DaemonConnected", "Boolean", "the actuator channel is connected", lambda s: s.daemon_connected),
    NodeField(
        "DaemonStopped", "Boolean", "the daemon announced a clean stop, nothing since", lambda s: s.daemon_stopped
    ),
    NodeField("GatewayHealthy", "Boolean", "every server serving, the loop on time", lambda s: s.gateway_healthy),
    NodeField(
        "LastHeartbeat",
        "DateTime",
        "reception of the daemon's last heartbeat event",
        lambda s: _time(s.last_heartbeat_ns),
    ),
    NodeField("LastMessage", "DateTime", "reception of the last verdict or event", lambda s: _time(s.last_message_ns)),
    NodeField("RunId", "String", "the daemon run being served", lambda s: s.run_id),
    NodeField("RunIndex", "UInt32", "daemon runs seen (1 + restarts)", lambda s: s.run_index),
    NodeField(
        "LastSeq", "Int64", "seq of the newest record; -1 none yet", lambda s: -1 if s.last_seq is None else s.last_seq
    ),
    NodeField("ConfigHash", "String", "the daemon's config hash in the newest verdict", lambda s: s.config_hash),
    NodeField("GapSeen", "Boolean", "verdicts lost within status_hold_ms", lambda s: s.gap_seen),
    NodeField("RestartSeen", "Boolean", "a daemon restart within status_hold_ms", lambda s: s.restart_seen),
    NodeField("StaleSeen", "Boolean", "a stale verdict within status_hold_ms", lambda s: s.stale_seen),
    NodeField("Heartbeat", "UInt32", "+1 per gateway tick (50 ms) while the gateway runs", lambda s: s.ticks),
)

_NI = {
    "overload": "Overload",
    "timeout": "Timeout",
    "error": "Error",
    "bad_frame": "BadFrame",
    "shutdown": "Shutdown",
    "bad_output": "BadOutput",
}
COUNTER_FIELDS: tuple[NodeField, ...] = (
    NodeField("Verdicts", "UInt64", "daemon verdicts received", lambda c: c.verdicts),
    NodeField("Records", "UInt64", "records published (verdicts + lost + camera drops)", lambda c: c.records),
    NodeField("Passes", "UInt64", "records with Reject false", lambda c: c.passes),
    NodeField("Rejects", "UInt64", "records with Reject true", lambda c: c.rejects),
    NodeField("NotInspected/Total", "UInt64", "daemon verdicts not inspected", lambda c: sum(c.not_inspected.values())),
    *(
        NodeField(f"NotInspected/{_NI[r]}", "UInt64", f"not inspected, reason `{r}`", lambda c, r=r: c.not_inspected[r])
        for r in NOT_INSPECTED_REASONS
    ),
    NodeField(
        "NotInspected/Other",
        "UInt64",
        "not inspected, a reason this gateway does not know",
        lambda c: c.not_inspected["other"],
    ),
    NodeField("Lost", "UInt64", "seq numbers that never arrived", lambda c: c.lost),
    NodeField("Gaps", "UInt64", "runs of lost seq numbers", lambda c: c.gaps),
    NodeField("Stale", "UInt64", "verdicts marked stale", lambda c: c.stale),
    NodeField("Restarts", "UInt64", "daemon restarts seen", lambda c: c.restarts),
    NodeField("CameraDrops", "UInt64", "frames the camera lost", lambda c: c.camera_drops),
    NodeField(
        "Duplicates",
        "UInt64",
        "verdicts already published or reported lost: not published again",
        lambda c: c.duplicates,
    ),
    NodeField("Malformed", "UInt64", "messages that are not a verdict or event of this camera", lambda c: c.malformed),
)

NOTICE_FIELDS = (("Kind", "String"), ("RunId", "String"))


def read_secret(path: Path, what: str) -> bytes:
    """A password or key file: must be readable, and not by everyone."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise SinkError(f"OPC UA: cannot read {what} {path}: {exc.strerror}") from None
    if mode & stat.S_IROTH:
        raise SinkError(f"OPC UA: {what} {path} is readable by everyone; chmod o-r it (e.g. 0640 root:inspector)")
    return data


class _Logins:
    """asyncua UserManager: user name + password, certificate of a trusted client, or anonymous if allowed."""

    def __init__(self, passwords: dict[str, bytes], certificates: dict[bytes, str], anonymous: bool):
        self.passwords = passwords
        self.certificates = certificates
        self.anonymous = anonymous

    def get_user(self, iserver: Any, username: str | None = None, password: Any = None, certificate: Any = None):
        from asyncua.crypto import uacrypto
        from asyncua.crypto.permission_rules import User, UserRole

        if username is not None:
            expected = self.passwords.get(username)
            given = password.encode() if isinstance(password, str) else bytes(password or b"")
            if expected is not None and hmac.compare_digest(expected, given):
                return User(role=UserRole.User, name=username)
            log.warning("OPC UA login refused for user %r", username)
            return None
        # asyncua passes the channel's client certificate (DER bytes) with any token, and the token's own
        # (verified: the client proved it holds the key) with an X.509 token.
        if certificate is not None:
            der = certificate if isinstance(certificate, bytes) else uacrypto.der_from_x509(certificate)
            name = self.certificates.get(der)
            if name is not None:
                return User(role=UserRole.User, name=name)
        return User(role=UserRole.User, name="anonymous") if self.anonymous else None


class OpcUaSink:
    name = "opcua"

    def __init__(self, config: GatewayLineConfig, config_file: Path, class_bits: Sequence[str]):
        self.config = config
        self.cfg = config.gateway.opcua
        self.config_file = config_file
        self.line, self.camera = config.line.name, config.line.camera
        self.image = RegisterImage(1, class_bits)  # encodes LastResult/Record in the Modbus layout
        self._record_vt: Any = None
        self.server: Any = None
        self._vt: Any = None
        self._nodes: dict[str, Any] = {}  # "LastResult/Seq" -> NodeId
        self._written: dict[str, Any] = {}  # last value written per state/counter node
        self._result_gen: Any = None
        self._notice_gen: Any = None
        self._running = False

    def _path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.config_file.parent / p

    async def start(self) -> None:
        from asyncua import Server, ua
        from asyncua.crypto import uacrypto

        self._vt = ua.VariantType
        cfg = self.cfg
        passwords: dict[str, bytes] = {}
        for u in cfg.users:
            lines = read_secret(self._path(u.password_file), f"password file of user {u.name!r}").splitlines()
            if not lines or not lines[0]:
                raise SinkError(f"OPC UA: the password file of user {u.name!r} is empty")
            passwords[u.name] = lines[0]
        certificates: dict[bytes, str] = {}
        trust_dir = self._path(cfg.trusted_clients) if cfg.trusted_clients else None
        if trust_dir is not None:
            if not trust_dir.is_dir():
                raise SinkError(f"OPC UA: trusted_clients {trust_dir} is not a directory")
            for f in sorted(trust_dir.iterdir()):
                if f.is_file():
                    try:
                        cert = await uacrypto.load_certificate(f)
                    except Exception as exc:
                        raise SinkError(f"OPC UA: {f} is not a certificate: {exc}") from None
                    certificates[uacrypto.der_from_x509(cert)] = f.stem
        server = Server(user_manager=_Logins(passwords, certificates, cfg.allow_anonymous))
        await server.init()
        server.set_endpoint(cfg.endpoint)
        server.set_server_name(f"inspector gateway {self.line}/{self.camera}")
        app_uri = f"urn:inspector:gateway:{self.line}:{self.camera}"
        if cfg.certificate and cfg.private_key:
            cert_path, key_path = self._path(cfg.certificate), self._path(cfg.private_key)
            read_secret(key_path, "private key")
            try:
                await server.load_certificate(str(cert_path))
                await server.load_private_key(str(key_path))
            except Exception as exc:
                raise SinkError(f"OPC UA: cannot load the certificate or key: {exc}") from None
            uri = _certificate_uri(server.iserver.certificate)
            app_uri = uri or app_uri  # clients check the certificate's URI against the application URI
        await server.set_application_uri(app_uri)
        from inspector.gateway.config import SECURITY_POLICIES

        server.set_security_policy(
            [getattr(ua.SecurityPolicyType, SECURITY_POLICIES[p]) for p in cfg.security_policies]
        )
        tokens: list[type] = []
        if cfg.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        if cfg.users:
            tokens.append(ua.UserNameIdentityToken)
        if certificates:
            tokens.append(ua.X509IdentityToken)
        server.set_identity_tokens(tokens)
        if trust_dir is not None:
            from asyncua.crypto.truststore import TrustStore
            from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

            store = TrustStore([trust_dir], [])
            await store.load()
            options = (
                CertificateValidatorOptions.TIME_RANGE
                | CertificateValidatorOptions.TRUSTED
                | CertificateValidatorOptions.PEER_CLIENT
            )
            server.set_certificate_validator(CertificateValidator(options, store).validate)  # type: ignore[arg-type]
        iserver = server.iserver
        iserver.max_monitored_item_queue_size = cfg.max_queue_size
        iserver.max_connections = cfg.max_clients
        iserver.max_unacked_messages_per_subscription = 100
        await self._build(server, ua)
        try:
            await server.start()
        except OSError as exc:
            raise SinkError(f"OPC UA: cannot listen on {cfg.endpoint}: {exc.strerror or exc}", code=4) from None
        self.server = server
        self._running = True
        log.info(
            "OPC UA on %s (policies %s; logins: %s)",
            cfg.endpoint,
            ", ".join(cfg.security_policies),
            ", ".join(
                x
                for x, on in (
                    ("anonymous", cfg.allow_anonymous),
                    ("user", bool(cfg.users)),
                    ("certificate", bool(certificates)),
                )
                if on
            ),
        )

    async def _build(self, server: Any, ua: Any) -> None:
        idx = await server.register_namespace(self.cfg.namespace_uri)
        self.ns = idx
        prefix = f"{self.line}/{self.camera}"

        async def obj(parent: Any, path: str, name: str) -> Any:
            return await parent.add_object(ua.NodeId(path, idx), ua.QualifiedName(name, idx))

        root = await obj(server.nodes.objects, "Inspector", "Inspector")
        line = await obj(root, self.line, self.line)
        cam = await obj(line, prefix, self.camera)
        self.camera_node = cam
        folders: dict[str, Any] = {}

        async def var(group: str, f: NodeField, initial: Any) -> None:
            parent_path = group
            *sub, leaf = f.name.split("/")
            parent = folders.get(group)
            if parent is None:
                parent = folders[group] = await obj(cam, f"{prefix}/{group}", group)
            for part in sub:
                parent_path = f"{parent_path}/{part}"
                if parent_path not in folders:
                    folders[parent_path] = await obj(parent, f"{prefix}/{parent_path}", part)
                parent = folders[parent_path]
            key = f"{group}/{f.name}"
            vt = getattr(ua.VariantType, f.vtype)
            node = await parent.add_variable(
                ua.NodeId(f"{prefix}/{key}", idx), ua.QualifiedName(leaf, idx), ua.Variant(initial, vt)
            )
            await node.write_attribute(
                ua.AttributeIds.Description,
                ua.DataValue(ua.Variant(ua.LocalizedText(f.meaning), ua.VariantType.LocalizedText)),
            )
            self._nodes[key] = node.nodeid

        defaults = {"String": "", "Boolean": False, "DateTime": NULL_TIME, "Double": -1.0}
        for f in RESULT_FIELDS:
            await var("LastResult", f, defaults.get(f.vtype, -1 if f.vtype in ("Int64", "Int32") else 0))
        record = await folders["LastResult"].add_variable(
            ua.NodeId(f"{prefix}/LastResult/Record", idx),
            ua.QualifiedName("Record", idx),
            ua.Variant([0] * RECORD_SIZE, ua.VariantType.UInt16),
        )
        self._nodes["LastResult/Record"] = record.nodeid
        for f in COUNTER_FIELDS:
            await var("Counters", f, 0)
        for f in STATE_FIELDS:
            await var("State", f, defaults.get(f.vtype, -1 if f.vtype == "Int64" else 0))
        properties = [(f.name, getattr(ua.VariantType, f.vtype)) for f in RESULT_FIELDS]
        result_type = await server.create_custom_event_type(
            idx, "ResultReadyEventType", ua.ObjectIds.BaseEventType, properties
        )
        notice_type = await server.create_custom_event_type(
            idx,
            "GatewayNoticeEventType",
            ua.ObjectIds.BaseEventType,
            [(n, getattr(ua.VariantType, t)) for n, t in NOTICE_FIELDS],
        )
        self.result_type_id, self.notice_type_id = result_type.nodeid, notice_type.nodeid
        self._result_gen = await server.get_event_generator(result_type, cam)
        self._notice_gen = await server.get_event_generator(notice_type, cam)
        _share_event_fields(self._result_gen.event, ua)

    # ------------------------------------------------------------------------------------------ updates

    def _values(self, r: Record) -> dict[str, Any]:
        out = {}
        for f in RESULT_FIELDS:
            out[f.name] = self.image.class_bits(r.defect_classes) if f.name == "DefectClassBits" else f.value(r)
        return out

    async def _write(self, key: str, vtype: str, value: Any, ts: datetime | None = None) -> None:
        dv = self._dv(ua_variant(value, getattr(self._vt, vtype)), ts)
        await self.server.write_attribute_value(self._nodes[key], dv)

    def _dv(self, variant: Any, ts: datetime | None = None) -> Any:
        from asyncua import ua

        return ua.DataValue(variant, SourceTimestamp=ts, ServerTimestamp=ts)

    async def publish(self, records: Sequence[Record], state: GatewayState) -> None:
        if not self._running or not records:
            return
        gen = self._result_gen
        values: dict[str, Any] = {}
        for r in records:
            values = self._values(r)
            for name, value in values.items():
                setattr(gen.event, name, value)
            gen.event.Severity = 800 if r.lost or r.stale else (500 if r.reject else 100)
            verdict = "REJECT" if r.reject else "PASS"
            await gen.trigger(
                time_attr=values["CreationTime"],
                message=f"{self.line}/{self.camera} seq {values['Seq']} frame {values['PartId'] or '?'} "
                f"{verdict} {r.reason}",
            )
            # Every record is a data change of Record: a monitored item with a queue gets each one. No timestamps:
            # asyncua deep-copies the value for every monitored item, and AGE_MS inside says what they would.
            await self.server.write_attribute_value(
                self._nodes["LastResult/Record"],
                self._dv(ua_variant(self.image.encode_record(r), self._vt.UInt16)),
            )
        ts = datetime.now(timezone.utc)
        for f in RESULT_FIELDS:
            await self._write(f"LastResult/{f.name}", f.vtype, values[f.name], ts)
        await self.update_state(state)

    async def update_state(self, state: GatewayState) -> None:
        if not self._running:
            return
        ts = None
        for group, fields, source in (("State", STATE_FIELDS, state), ("Counters", COUNTER_FIELDS, state.counters)):
            for f in fields:
                key = f"{group}/{f.name}"
                value = f.value(source)
                if self._written.get(key, _UNSET) != value:
                    self._written[key] = value
                    ts = ts or datetime.now(timezone.utc)
                    await self._write(key, f.vtype, value, ts)

    async def notice(self, notice: Notice) -> None:
        if not self._running:
            return
        gen = self._notice_gen
        gen.event.Kind = notice.kind
        gen.event.RunId = notice.run_id
        gen.event.Severity = notice.severity
        await gen.trigger(message=notice.message)

    @property
    def healthy(self) -> bool:
        return self._running and self.server is not None and self.server.bserver is not None

    async def stop(self) -> None:
        if self.server is not None:
            self._running = False
            await self.server.stop()
            self.server = None


_UNSET = object()


def ua_variant(value: Any, vtype: Any) -> Any:
    from asyncua import ua

    return ua.Variant(value, vtype)


def _share_event_fields(event: Any, ua: Any) -> None:
    """Make `event` (the one ResultReadyEvent object the sink fills and triggers per record) build each field's
    Variant once per trigger and hand the same Variants to every subscriber.

    asyncua's Event.to_event_fields deep-copies every field value for every monitored item, so that a caller who
    later mutates a value in place cannot change a notification already queued. The sink never mutates: it
    assigns fresh immutable values (str, int, float, bool, datetime) per record. The copies were two thirds of
    the gateway's cost per record with one subscriber, and grow with each one.
    """
    cache: dict[str, Any] = {}
    current: list[Any] = [None]

    def to_event_fields(select_clauses: list[Any]) -> list[Any]:
        if current[0] is not event.EventId:  # a new trigger: EventId is new for each one
            cache.clear()
            current[0] = event.EventId
        out = []
        for sattr in select_clauses:
            path = sattr.BrowsePath
            name = event.browse_path_to_attribute_name(path) if path else ua.AttributeIds(sattr.AttributeId).name
            variant = cache.get(name)
            if variant is None:
                value = getattr(event, name, None)
                variant = ua.Variant(None) if value is None else ua.Variant(value, event.data_types[name])
                cache[name] = variant
            out.append(variant)
        return out

    event.to_event_fields = to_event_fields


def _certificate_uri(cert: Any) -> str | None:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def node_model_markdown() -> str:
    """The node model tables of docs/PLC.md, generated from the field tables above."""
    out: list[str] = []
    for title, fields in (
        ("`LastResult/<name>`, and the same names as fields of every `ResultReadyEventType` event", RESULT_FIELDS),
        ("`State/<name>`", STATE_FIELDS),
        ("`Counters/<name>` (UInt64, since the gateway started)", COUNTER_FIELDS),
    ):
        out += [f"{title}:", "", "| name | type | meaning |", "|---|---|---|"]
        out += [f"| `{f.name}` | {f.vtype} | {f.meaning} |" for f in fields]
        out.append("")
    out += [
        "`GatewayNoticeEventType` (emitted by the camera object): `Kind` (String: "
        "restart, gap, stale, daemon_alive, daemon_silent, daemon_disconnected, daemon_stopped), `RunId`, and the "
        "base event's `Message` and `Severity`.",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(node_model_markdown(), end="")
