"""systemd/inspector@.service: accepted by systemd-analyze without a warning, and the directives that matter set."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "inspector@.service"
INSTALLED_BINARY = "/opt/inspector/venv/bin/inspector"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (package: systemd)")


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


@pytest.fixture
def rendered(tmp_path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here: verify refuses a missing binary."""
    binary = Path(sys.executable).with_name("inspector")
    if not binary.exists():
        binary = Path(sys.executable)
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    target = tmp_path / "inspector@.service"
    target.write_text(text.replace(INSTALLED_BINARY, str(binary)))
    return target


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit_without_warnings(rendered):
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(rendered.with_name("inspector@line1.service"))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=rendered.parent,
    )
    # verify exits 0 on unknown keys and bad values (it only warns), so any output at all is a failure.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


@needs_analyze
def test_verify_would_catch_a_broken_unit(rendered):
    # The check above is only worth something if a mistake makes verify speak.
    broken = rendered.with_name("broken@.service")
    broken.write_text(rendered.read_text().replace("Type=notify", "Type=notifyy"))
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(broken.with_name("broken@x.service"))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=rendered.parent,
    )
    assert "notifyy" in proc.stdout + proc.stderr


@needs_analyze
def test_security_exposure_is_low(rendered):
    proc = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "security",
            "--offline=yes",
            "--no-pager",
            str(rendered.with_name("inspector@line1.service")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=rendered.parent,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    if match is None:
        pytest.skip(f"this systemd-analyze has no offline security analysis: {proc.stderr.strip()[:200]}")
    # 0 = fully locked down, 10 = unprotected; a GPU/camera service cannot use PrivateDevices or IP isolation.
    assert float(match.group(1)) <= 2.5, proc.stdout


def test_the_directives_that_matter():
    d = _directives(UNIT.read_text())
    assert d["Service.Type"] == ["notify"]
    assert d["Service.NotifyAccess"] == ["main"]
    assert d["Service.ExecStart"] == [f"{INSTALLED_BINARY} run --config /etc/inspector/%i.yaml"]
    assert d["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Service.Restart"] == ["on-failure"]
    assert re.fullmatch(r"\d+s?", d["Service.WatchdogSec"][0])
    # Stop must outlast draining: the default deadline (1 s) plus two socket LINGERs (1 s each), with margin.
    assert int(d["Service.TimeoutStopSec"][0].rstrip("s")) >= 10
    assert d["Service.User"] == ["inspector"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "DevicePolicy": "closed",
        "ProtectKernelModules": "yes",
        "RestrictNamespaces": "yes",
        "SystemCallArchitectures": "native",
    }.items():
        assert d[f"Service.{key}"] == [value], key
    assert "PrivateDevices" not in {k.split(".", 1)[1] for k in d}  # would hide the GPU and the cameras
    families = set(d["Service.RestrictAddressFamilies"][0].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert "@system-service" in d["Service.SystemCallFilter"]
    allowed = " ".join(d["Service.DeviceAllow"])
    assert "char-nvidia-frontend" in allowed and "char-nvidia-uvm" in allowed and "char-usb_device" in allowed
    assert d["Install.WantedBy"] == ["multi-user.target"]


def test_the_user_is_declared_for_sysusers():
    lines = [
        line.split()
        for line in (ROOT / "systemd" / "inspector.sysusers.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0][:2] == ["u", "inspector"]
    assert ["m", "inspector", "video"] in lines


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed (package: systemd)"
)
def test_systemd_sysusers_creates_the_user(tmp_path):
    (tmp_path / "etc").mkdir()
    conf = ROOT / "systemd" / "inspector.sysusers.conf"
    # --root on an empty tree with --dry-run: parses the file for real and touches nothing.
    proc = subprocess.run(
        [shutil.which("systemd-sysusers"), f"--root={tmp_path}", "--dry-run", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Creating user 'inspector'" in out and "ignoring" not in out.lower()
