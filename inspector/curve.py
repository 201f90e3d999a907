"""ZeroMQ CURVE keys for the daemon's sockets and their clients (docs/OPERATIONS.md, "Securing the ZeroMQ
sockets"): reading and checking key files, and making them (`inspector keys generate`).

Keys are the certificate files of `zmq.auth` (pyzmq): NAME.key holds a public key, NAME.key_secret the public
and the secret key. A secret key file that anyone but its owner can read or write is refused, and so is a public
key file or directory of authorised keys that others can write (whoever can add a key there can connect): a
start refused with the file's name beats a key quietly shared. Config objects do no I/O: the files are read
here, when the daemon, `inspector listen` or the gateway starts.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth


class CurveKeyError(RuntimeError):
    """A key file that cannot be used: unreadable, not a key, or too open. The message names the file."""


def curve_available() -> bool:
    return bool(zmq.has("curve"))


def _check_mode(path: Path, secret: bool) -> None:
    try:
        st = path.stat()
    except OSError as exc:
        raise CurveKeyError(f"{path}: cannot read: {exc.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if secret and mode & 0o077:
        raise CurveKeyError(
            f"{path}: a secret key must be readable by its owner only (mode is {mode:04o}; chmod 600 {path})"
        )
    if not secret and mode & 0o022:
        raise CurveKeyError(f"{path}: writable by others, who could add their own key (mode is {mode:04o}; chmod go-w)")


def _read_certificate(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    _check_mode(path, secret)
    if not os.access(path, os.R_OK):
        raise CurveKeyError(f"{path}: cannot read: permission denied")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"{path}: not a ZeroMQ key file ({exc})") from None
    if secret and secret_key is None:
        raise CurveKeyError(f"{path}: holds no secret key (the NAME.key_secret file is needed here, not NAME.key)")
    return public, secret_key


def load_secret(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys of a NAME.key_secret file, checked as above."""
    public, secret = _read_certificate(Path(path), secret=True)
    assert secret is not None
    return public, secret


def load_public(path: str | Path) -> bytes:
    """The z85 public key of a NAME.key (or NAME.key_secret) file."""
    return _read_certificate(Path(path), secret=False)[0]


def load_authorised(path: str | Path) -> frozenset[bytes]:
    """The public keys allowed to connect: one key file, or every *.key file of a directory."""
    p = Path(path)
    if not p.is_dir():
        return frozenset({load_public(p)})
    _check_mode(p, secret=False)
    keys = frozenset(load_public(f) for f in sorted(p.glob("*.key")))
    if not keys:
        raise CurveKeyError(f"{p}: no client public key (*.key) in it: nobody could connect")
    return keys


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """The daemon's key pair and the clients it lets in (on both sockets)."""

    public: bytes
    secret: bytes
    authorised: frozenset[bytes]

    @classmethod
    def load(cls, secret_key: str | Path, authorised_keys: str | Path) -> ServerKeys:
        if not curve_available():
            raise CurveKeyError("this libzmq has no CURVE support (zmq.has('curve') is False)")
        public, secret = load_secret(secret_key)
        return cls(public, secret, load_authorised(authorised_keys))

    def apply(self, sock: zmq.Socket[bytes], domain: str) -> None:
        """Make `sock` a CURVE server whose clients are checked by the ZAP handler under `domain`."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """A client's key pair and the server key it expects (listen, the gateway)."""

    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def load(cls, client_secret_key: str | Path, server_public_key: str | Path) -> ClientKeys:
        if not curve_available():
            raise CurveKeyError("this libzmq has no CURVE support (zmq.has('curve') is False)")
        public, secret = load_secret(client_secret_key)
        return cls(public, secret, load_public(server_public_key))

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Before connect(): authenticate as this client and accept only this server."""
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server)


def public_key_file(secret_key_file: str | Path) -> Path:
    """NAME.key for NAME.key_secret: where zmq.auth (and `inspector keys generate`) put the public half."""
    p = Path(secret_key_file)
    return p.with_name(p.name.removesuffix("_secret")) if p.name.endswith(".key_secret") else p


def generate(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Make NAME.key (mode 644) and NAME.key_secret (mode 600) in `directory`; never overwrites a key."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    for f in (public, secret):
        if f.exists():
            raise CurveKeyError(f"{f} exists: not overwritten (remove it first to replace the key)")
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        made_public, made_secret = zmq.auth.create_certificates(d, name)
    finally:
        os.umask(old)
    os.chmod(made_secret, 0o600)
    os.chmod(made_public, 0o644)
    return Path(made_public), Path(made_secret)
