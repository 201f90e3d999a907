"""The one validation (inspector.runtime.build): check-config, start-up and reload refuse the same broken lines,
each problem in one clear line. Real models, made broken the way a line gets them: a truncated copy, a manifest
edited by hand, a segmenter exported for other classes, endpoints that collide."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from daemon_helpers import Collector, free_port, synthetic, write_config
from onnx import helper, numpy_helper
from tiny_models import write_tiny_models

from inspector.daemon import Daemon
from inspector.manifest import manifest_path, sha256_file
from inspector.runtime import StartupError, check

pytestmark = pytest.mark.timeout(60)


def _cli_check(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inspector.cli", "check-config", str(config)], capture_output=True, text=True, timeout=60
    )


def _edit_manifest(model: Path, **changes) -> None:
    """Change manifest fields and re-sign the file hash, as a careless hand edit (or a bad export) would."""
    path = manifest_path(model)
    data = json.loads(path.read_text())
    for key, value in changes.items():
        data[key] = value
    data["sha256"] = sha256_file(model)
    path.write_text(json.dumps(data))


@pytest.fixture
def models(tmp_path) -> tuple[Path, Path]:
    return write_tiny_models(tmp_path / "models")


def _config(tmp_path: Path, models: tuple[Path, Path], extra: str = "") -> Path:
    return write_config(tmp_path / "line.yaml", models, source=synthetic(), port=free_port(), extra=extra)


def _startup_error(config: Path) -> StartupError:
    daemon = Daemon(config, console=False, install_signals=False)
    with pytest.raises(StartupError) as info:
        daemon.start()
    return info.value


def _broken(case: str, models: tuple[Path, Path]) -> str:
    """Break the tiny models as `case` says; returns words the one-line error must contain."""
    recognizer, segmenter = models
    if case == "truncated-onnx":
        data = recognizer.read_bytes()
        recognizer.write_bytes(data[: len(data) // 2])
        _edit_manifest(recognizer)  # the hash matches: only opening the model can tell
        return "cannot load"
    if case == "manifest-input-disagrees-with-graph":
        _edit_manifest(recognizer, input={"name": "image", "height": 96, "width": 96, "channels": 1})
        return "input shape"
    if case == "manifest-grid-disagrees-with-graph":
        _edit_manifest(
            recognizer, block_size=16, outputs=[{"name": "block_scores", "shape": ["N", "H", "W"], "meaning": "x"}]
        )
        return "4x4 grid of 16-pixel blocks"
    if case == "segmenter-class-count":
        _edit_manifest(
            segmenter,
            classes=["background", "crack", "pit"],
            outputs=[{"name": "pixel_scores", "shape": ["N", "C", 64, 64], "meaning": "x"}],
        )
        return "3 classes"
    raise AssertionError(case)


CASES = [
    "truncated-onnx",
    "manifest-input-disagrees-with-graph",
    "manifest-grid-disagrees-with-graph",
    "segmenter-class-count",
]


@pytest.mark.parametrize("case", CASES)
def test_check_config_and_startup_refuse_the_same_broken_model_in_one_line(tmp_path, models, case):
    words = _broken(case, models)
    config = _config(tmp_path, models)
    result = _cli_check(config)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert words in lines[0] and "models." in lines[0], lines[0]
    error = _startup_error(config)
    assert error.code == 3
    assert [f"{config}: {p}" for p in error.problems] == lines  # start-up says exactly what check-config said


def test_segmenter_with_wrong_classes_is_refused_before_the_first_frame(tmp_path, models):
    """The manifest's output shape agrees with its classes but not with the graph: the blank-frame inference."""
    _, segmenter = models
    _edit_manifest(
        segmenter,
        classes=["background", "crack", "pit"],
        outputs=[{"name": "pixel_scores", "shape": ["N", 3, 64, 64], "meaning": "x"}],
    )
    problems = check(_config(tmp_path, models))
    assert len(problems) == 1 and "pixel_scores" in problems[0], problems


def test_every_problem_is_reported_not_only_the_first(tmp_path, models):
    recognizer, segmenter = models
    recognizer.write_bytes(recognizer.read_bytes()[:100])
    _edit_manifest(recognizer)
    _edit_manifest(segmenter, classes=["background", "a", "b"])
    config = _config(tmp_path, models, extra="decision: {ignore_regions: {mask: absent.png}}\n")
    problems = check(config)
    assert len(problems) == 3, problems
    assert "models.recognizer" in problems[0] and "models.segmenter" in problems[1]
    assert "decision.ignore_regions.mask" in problems[2]


def _offset_model(path: Path, offset: float) -> None:
    """The recognizer with `offset` added to its scores (a poisoned export): still a valid graph."""
    model = onnx.load(str(path))
    graph = model.graph
    out = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = "unshifted"
    graph.initializer.append(numpy_helper.from_array(np.array(offset, np.float32), "offset"))
    graph.node.append(helper.make_node("Add", ["unshifted", "offset"], [out]))
    onnx.save(model, str(path))
    _edit_manifest(path)


@pytest.mark.parametrize("offset", [-5.0, float("nan")])
def test_scores_that_are_not_probabilities_are_refused(tmp_path, models, offset):
    _offset_model(models[0], offset)
    problems = check(_config(tmp_path, models))
    assert len(problems) == 1 and "probabilities" in problems[0], problems
    assert graph_is_valid(models[0])


def graph_is_valid(path: Path) -> bool:
    onnx.checker.check_model(onnx.load(str(path)))
    return True


@pytest.mark.parametrize(
    ("publish", "metrics", "words"),
    [
        ('{broadcast: {bind: "tcp://127.0.0.1:{p}"}, actuator: {bind: "tcp://127.0.0.1:{p}"}}', "", "same address"),
        ('{broadcast: {bind: "tcp://127.0.0.1:{p}"}, actuator: {bind: "tcp://*:{p}"}}', "", "same address"),
        ('{broadcast: {bind: "tcp://localhost:{p}"}, actuator: null}', "{port: {p}}", "port of its own"),
        ('{broadcast: {bind: "ipc:///tmp/x"}, actuator: {bind: "ipc:///tmp/x"}}', "", "same address"),
    ],
)
def test_endpoints_must_be_distinct(tmp_path, models, publish, metrics, words):
    port = free_port()
    config = _config(tmp_path, models)
    text = config.read_text().split("publish:")[0]
    text += "publish: " + publish.replace("{p}", str(port)) + "\n"
    text += "metrics: " + (metrics.replace("{p}", str(port)) if metrics else "{enabled: true, port: 0}") + "\n"
    config.write_text(text)
    result = _cli_check(config)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and f"{config}:" in result.stderr
    assert _startup_error(config).code == 2


def test_distinct_endpoints_on_the_same_port_of_different_hosts_are_fine(tmp_path, models):
    port = free_port()
    config = _config(tmp_path, models)
    text = config.read_text().split("publish:")[0]
    text += (
        f'publish: {{broadcast: {{bind: "tcp://127.0.0.1:{port}"}}, actuator: {{bind: "tcp://127.0.0.2:{port}"}}}}\n'
    )
    text += "metrics: {enabled: true, port: 0}\n"
    config.write_text(text)
    assert check(config) == []


def test_a_reload_to_a_broken_model_keeps_the_running_config(tmp_path, models):
    port = free_port()
    config = write_config(tmp_path / "line.yaml", models, source=synthetic(), port=port)
    sub = Collector(port)
    daemon = Daemon(config, max_frames=None, console=False, install_signals=False, before_start=sub.wait_subscribed)
    daemon.start()
    try:
        running = daemon.runtime
        broken = tmp_path / "broken"
        broken_models = write_tiny_models(broken)
        words = _broken("segmenter-class-count", broken_models)
        config.write_text(config.read_text().replace(str(models[1]), str(broken_models[1])))
        assert daemon.reload() == "failed"
        assert daemon.runtime is running
        sub.wait_for(lambda: sub.events("reload"))
        event = sub.events("reload")[-1]
        assert event["result"] == "failed" and words in event["error"]
        before = len(sub.verdicts())
        sub.wait_for(lambda: len(sub.verdicts()) > before + 5)  # still inspecting with the running models
    finally:
        daemon.stop()
        daemon.wait()
        sub.close()


def test_per_class_areas_must_name_the_segmenters_classes(tmp_path, models):
    """The segmenter says ['background', 'defect']: a per-class area for 'crack' would never apply."""
    config = _config(tmp_path, models, extra="decision: {min_area_px_per_class: {crack: 40}}\n")
    result = _cli_check(config)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "decision" in line and "crack" in line and "not a defect class" in line, line
    error = _startup_error(config)
    assert error.code == 2 and [f"{config}: {p}" for p in error.problems] == [line]


GATEWAY = """gateway:
  opcua: {{endpoint: "opc.tcp://127.0.0.1:{opcua}/inspector/", allow_anonymous: true}}
  modbus: {{bind: 0.0.0.0, port: {modbus}}}
"""


@pytest.mark.parametrize("clash", ["modbus-on-broadcast", "opcua-on-modbus"])
def test_gateway_servers_must_not_take_the_daemons_addresses(tmp_path, models, clash):
    port, other = free_port(), free_port()
    config = write_config(tmp_path / "line.yaml", models, source=synthetic(), port=port)
    text = config.read_text().replace("  actuator: null\n", f'  actuator: {{bind: "tcp://127.0.0.1:{free_port()}"}}\n')
    if clash == "modbus-on-broadcast":
        text += GATEWAY.format(opcua=other, modbus=port)
        names = ("publish.broadcast.bind", "gateway.modbus.bind/port")
    else:
        text += GATEWAY.format(opcua=other, modbus=other)
        names = ("gateway.opcua.endpoint", "gateway.modbus.bind/port")
    config.write_text(text)
    result = _cli_check(config)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert all(name in line for name in names) and "same address" in line, line
    gateway = subprocess.run(
        [sys.executable, "-m", "inspector.cli", "gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gateway.returncode == 2 and gateway.stderr.strip() == line  # the gateway refuses the same, in the same words


def test_run_prints_one_line_per_problem_and_its_exit_status(tmp_path, models):
    """`inspector run` says what check-config says: every problem on its own line, no traceback, exit 3."""
    _broken("truncated-onnx", models)
    config = _config(tmp_path, models, extra="decision: {ignore_regions: {mask: absent.png}}\n")
    run = subprocess.run(
        [sys.executable, "-m", "inspector.cli", "run", "--config", str(config), "--no-console"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 3 and "Traceback" not in run.stderr, run.stderr
    refused = [line for line in run.stderr.splitlines() if "cannot start: " in line]
    assert len(refused) == 2, run.stderr
    checked = _cli_check(config).stderr.strip().splitlines()
    assert [line.split("cannot start: ", 1)[1] for line in refused] == [c.split(": ", 1)[1] for c in checked]


def test_run_on_an_alias_bomb_exits_2_in_one_line(tmp_path, models):
    config = _config(tmp_path, models)
    config.write_text(config.read_text() + 'a: &a ["x"]\nb: [*a, *a, *a, *a, *a, *a, *a, *a]\n')
    run = subprocess.run(
        [sys.executable, "-m", "inspector.cli", "run", "--config", str(config), "--no-console"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    refused = [line for line in run.stderr.splitlines() if "cannot start: " in line]
    assert len(refused) == 1 and f"{config}:" in refused[0] and "anchors and aliases" in refused[0], run.stderr
