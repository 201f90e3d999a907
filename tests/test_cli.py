"""`inspector` on bad input (as a subprocess: the exit status and stderr an operator sees), check-config, and
listen against a running daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from daemon_helpers import free_port, synthetic, write_config
from tiny_models import write_tiny_models

from inspector.daemon import Daemon

# A guard against a hang, not a speed limit: each test starts fresh interpreters (the CLI imports ONNX Runtime
# and OpenCV), which takes a minute or more on a loaded 2-core machine.
pytestmark = pytest.mark.timeout(600)


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inspector.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def good(tmp_path, models) -> Path:
    return write_config(tmp_path / "line.yaml", models, source=synthetic(), port=free_port())


@pytest.mark.parametrize(
    ("edit", "line", "words"),
    [
        (lambda t: t.replace("  width: 128", "  width: [128"), None, "not valid YAML"),  # malformed YAML
        (lambda t: t.replace("  width: 128", "  width: wide"), 5, "width"),  # wrong type
        (lambda t: t.replace("  height: 128", "  height: 128\n  colour: red"), 7, "unknown field"),  # unknown key
    ],
    ids=["malformed", "wrong-type", "unknown-key"],
)
def test_bad_config_exits_2_with_file_and_line_and_no_traceback(good, edit, line, words):
    good.write_text(edit(good.read_text()))
    for args in (("run", "--config", str(good)), ("check-config", str(good))):
        r = _cli(*args)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert words in r.stderr
        where = f"{good}:{line}:" if line else f"{good}:"
        assert where in r.stderr, r.stderr


def test_missing_model_exits_3(tmp_path, models):
    config = write_config(tmp_path / "line.yaml", (models[0], tmp_path / "gone.onnx"), source=synthetic(), port=0)
    r = _cli("run", "--config", str(config))
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert "models.segmenter" in r.stderr and "gone.onnx" in r.stderr and "not found" in r.stderr


def test_manifest_that_disagrees_exits_3(good):
    good.write_text(good.read_text().replace("  onnxruntime:", "  segmenter_mode: gated\n  onnxruntime:"))
    text = good.read_text()
    seg_line = next(line for line in text.splitlines() if line.startswith("  segmenter:"))
    good.write_text(text.replace(seg_line, seg_line[:-1] + ", expect_classes: [background, crack]}"))
    r = _cli("run", "--config", str(good))
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert "expect_classes" in r.stderr and "['background', 'defect']" in r.stderr
    r = _cli("check-config", str(good))
    assert r.returncode == 2 and "expect_classes" in r.stderr


def test_check_config_accepts_the_shipped_configs():
    root = Path(__file__).resolve().parents[1]
    r = _cli("check-config", str(root / "configs" / "demo.yaml"))
    assert r.returncode == 0, r.stderr


def test_listen_prints_json_verdicts_from_a_running_daemon(tmp_path, models):
    port = free_port()
    config = write_config(tmp_path / "line.yaml", models, source=synthetic(rate=100), port=port)
    daemon = Daemon(config, console=False, install_signals=False)
    daemon.start()
    waiter = threading.Thread(target=daemon.wait, daemon=True)
    waiter.start()
    try:
        r = _cli("listen", "--config", str(config), "--count", "5", "--json", "--timeout", "20")
    finally:
        daemon.stop()
        waiter.join(20)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 5
    msgs = [json.loads(line) for line in lines]
    assert all(m["schema"] == "inspector.verdict/1" and m["line"] == "test" for m in msgs)
    assert [m["seq"] for m in msgs] == list(range(msgs[0]["seq"], msgs[0]["seq"] + 5))
