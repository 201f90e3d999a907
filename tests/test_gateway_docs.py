"""docs/PLC.md is generated where it can be (register map, node model) and checked against the code where it
cannot; check-config validates the gateway section; the daemon never imports the gateway or its extra."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from inspector.cli import check_config
from inspector.gateway.modbus import HEADER, RECORD, register_map_markdown
from inspector.gateway.opcua import COUNTER_FIELDS, RESULT_FIELDS, STATE_FIELDS, node_model_markdown

ROOT = Path(__file__).resolve().parents[1]
PLC = (ROOT / "docs" / "PLC.md").read_text()


def _block(name: str) -> str:
    match = re.search(rf"<!-- {name}:start[^>]*-->\n(.*?)<!-- {name}:end -->", PLC, re.S)
    assert match, f"docs/PLC.md has no {name} block"
    return match.group(1)


def test_the_register_map_in_the_docs_is_the_one_in_the_code():
    assert _block("register-map") == register_map_markdown()
    table = _block("register-map")
    for f in HEADER:
        assert f"| `{f.name}` | {f.kind} |" in table
    for f in RECORD:
        assert f"| `{f.name}` | {f.kind} |" in table


def test_the_node_model_in_the_docs_is_the_one_in_the_code():
    assert _block("node-model") == node_model_markdown()
    for f in (*RESULT_FIELDS, *STATE_FIELDS, *COUNTER_FIELDS):
        assert f"| `{f.name}` | {f.vtype} |" in _block("node-model")


def test_readme_and_config_docs_point_at_the_gateway():
    readme = (ROOT / "README.md").read_text()
    assert "[docs/PLC.md](docs/PLC.md)" in readme
    assert "`plc`" in readme and "asyncua" in readme and "pymodbus" in readme
    assert "gateway" in (ROOT / "docs" / "CONFIG.md").read_text()
    assert "inspector-gateway@" in (ROOT / "docs" / "OPERATIONS.md").read_text()


def test_check_config_validates_the_gateway_section(tmp_path):
    config = tmp_path / "line.yaml"
    config.write_text(
        "source: {kind: synthetic}\n"
        "models: {recognizer: {path: rec.onnx}, segmenter_mode: never}\n"
        "gateway:\n"
        "  modbus: {ring_size: 0}\n"
        "  opcua: {allow_anonymous: true, endpont: x}\n"
    )
    problems = check_config(config)
    assert any(p.startswith(f"{config}:4: gateway.modbus.ring_size:") for p in problems), problems
    assert any(p.startswith(f"{config}:5: gateway.opcua.endpont: unknown field") for p in problems), problems


def test_the_daemon_never_imports_the_gateway_or_its_extra():
    code = (
        "import sys, inspector.daemon, inspector.cli, inspector.pipeline, inspector.publish\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('inspector.gateway', 'asyncua', 'pymodbus')))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
