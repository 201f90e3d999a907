"""systemd/inspector-gateway@.service: accepted by systemd-analyze without a warning, locked down at least as far
as the daemon's unit, and the directives that matter set."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_systemd_unit import INSTALLED_BINARY, _directives

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "inspector-gateway@.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (package: systemd)")


@pytest.fixture
def rendered(tmp_path) -> Path:
    binary = Path(sys.executable).with_name("inspector")
    if not binary.exists():
        binary = Path(sys.executable)
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    target = tmp_path / "inspector-gateway@.service"
    target.write_text(text.replace(INSTALLED_BINARY, str(binary)))
    return target


def _analyze(*args: str, cwd: Path) -> str:
    proc = subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    return proc.stdout + proc.stderr


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit_without_warnings(rendered):
    out = _analyze("verify", str(rendered.with_name("inspector-gateway@line1.service")), cwd=rendered.parent)
    # After= names inspector@line1.service, which is not installed here: the only message allowed.
    lines = [line for line in out.strip().splitlines() if "inspector@line1.service" not in line]
    assert not lines, out


@needs_analyze
def test_security_exposure_is_lower_than_the_daemons(rendered):
    out = _analyze(
        "security", "--offline=yes", "--no-pager", str(rendered.with_name("inspector-gateway@line1.service")),
        cwd=rendered.parent,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    if match is None:
        pytest.skip(f"this systemd-analyze has no offline security analysis: {out.strip()[:200]}")
    # A network service with no devices: it must rate below the daemon's bound (2.5).
    assert float(match.group(1)) <= 2.0, out


def test_the_directives_that_matter():
    d = _directives(UNIT.read_text())
    assert d["Service.Type"] == ["notify"]
    assert d["Service.ExecStart"] == [f"{INSTALLED_BINARY} gateway --config /etc/inspector/%i.yaml"]
    assert d["Service.Restart"] == ["always"]
    assert re.fullmatch(r"\d+s?", d["Service.WatchdogSec"][0])
    assert d["Service.User"] == ["inspector"]
    # The one capability: binding Modbus TCP's port 502.
    assert d["Service.CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert d["Service.AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelModules",
                "RestrictNamespaces", "MemoryDenyWriteExecute", "LockPersonality"):  # fmt: skip
        assert d[f"Service.{key}"] == ["yes"], key
    assert d["Service.ProtectSystem"] == ["strict"]
    assert set(d["Service.RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "@system-service" in d["Service.SystemCallFilter"]
    assert "Requires" not in {k.split(".", 1)[1] for k in d}  # it keeps serving while the daemon restarts
    assert d["Install.WantedBy"] == ["multi-user.target"]
