"""A reload (SIGHUP) to a bad file of any kind leaves the running line inspecting with its config, publishes a
`reload` event saying why, and the daemon still stops promptly. A real daemon, a real SUB socket, the files that
killed or wedged it before: an alias bomb, a list nested thousands deep, an integer too large for a C long, a
truncated ONNX model."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from daemon_helpers import Collector, free_port, synthetic, write_config
from tiny_models import write_tiny_models

from inspector.daemon import Daemon
from inspector.manifest import manifest_path, sha256_file

pytestmark = pytest.mark.timeout(600)


def _alias_bomb() -> str:
    lines = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def _truncated_copy(models: tuple[Path, Path], folder: Path) -> tuple[Path, Path]:
    """The models again, the recognizer cut in half with its manifest re-signed: only opening it can tell."""
    recognizer, segmenter = write_tiny_models(folder)
    data = recognizer.read_bytes()
    recognizer.write_bytes(data[: len(data) // 2])
    manifest = json.loads(manifest_path(recognizer).read_text())
    manifest["sha256"] = sha256_file(recognizer)
    manifest_path(recognizer).write_text(json.dumps(manifest))
    return recognizer, segmenter


class _Running:
    """A daemon serving reloads and the console on its own thread, as `inspector run` does on the main one."""

    def __init__(self, config: Path, sub: Collector):
        self.daemon = Daemon(config, console=False, install_signals=False, before_start=sub.wait_subscribed)
        self.daemon.start()
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        self.rc = self.daemon.wait()

    def stop(self) -> int | None:
        self.daemon.stop()
        self.thread.join(120)
        assert not self.thread.is_alive(), "the daemon did not stop"
        return self.rc


def test_a_reload_to_any_bad_file_keeps_the_line_inspecting_and_says_why(tmp_path):
    models = write_tiny_models(tmp_path / "models")
    port = free_port()
    config = write_config(tmp_path / "line.yaml", models, source=synthetic(), port=port)
    good = config.read_text()
    broken_models = _truncated_copy(models, tmp_path / "broken")
    bad_files = {
        "alias bomb": (good + _alias_bomb(), "invalid", "anchors and aliases are not allowed"),
        "nested 3000 deep": (good + "x: " + "[" * 3000 + "]" * 3000 + "\n", "invalid", "line.yaml:"),
        "mapping nested 100 deep": (good + "x: " + "{a: " * 100 + "1" + "}" * 100 + "\n", "invalid", "nesting"),
        "integer beyond a C long": (
            good.replace("pool_size: 8", "pool_size: 8\n  seed: " + "9" * 5000),
            "invalid",
            "source.seed: integer of 5000 characters refused",
        ),
        "truncated ONNX": (
            good.replace(str(models[0]), str(broken_models[0])),
            "failed",
            f"models.recognizer ({broken_models[0]})",
        ),
        "binary junk": (None, "invalid", "not UTF-8"),
    }
    sub = Collector(port)
    running = _Running(config, sub)
    try:
        daemon = running.daemon
        running_hash = daemon.runtime.config_hash
        sub.wait_for(lambda: len(sub.verdicts()) > 3)
        for name, (text, result, words) in bad_files.items():
            if text is None:
                config.write_bytes(bytes(range(256)) * 8)
            else:
                config.write_text(text)
            before = len(sub.events("reload"))
            daemon.request_reload()  # what SIGHUP does
            sub.wait_for(lambda before=before: len(sub.events("reload")) > before, timeout_s=120)
            event = sub.events("reload")[-1]
            assert event["result"] == result, (name, event)
            assert words in event["error"], (name, event["error"])
            assert event["config_hash"] == running_hash, name
            seen = len(sub.verdicts())
            sub.wait_for(lambda seen=seen: len(sub.verdicts()) > seen + 3, timeout_s=60)  # still inspecting
            assert {v["config_hash"] for v in sub.verdicts()[seen:]} == {running_hash}, name
            assert daemon.runtime.config_hash == running_hash
        assert daemon.reloads["ok"] == 0 and sum(daemon.reloads.values()) == len(bad_files)

        # And a good file still applies afterwards.
        config.write_text(good + "decision: {block_threshold: 0.7}\n")
        daemon.request_reload()
        sub.wait_for(lambda: sub.events("reload") and sub.events("reload")[-1]["result"] == "ok", timeout_s=120)
        assert sub.events("reload")[-1]["config_hash"] == daemon.runtime.config_hash != running_hash
    finally:
        rc = running.stop()
        sub.close()
    assert rc == 0
    assert sub.events("stop"), "the stop event was published"


def test_reload_requests_during_a_reload_are_coalesced(tmp_path):
    models = write_tiny_models(tmp_path / "models")
    port = free_port()
    config = write_config(tmp_path / "line.yaml", models, source=synthetic(), port=port)
    sub = Collector(port)
    running = _Running(config, sub)
    try:
        daemon = running.daemon
        config.write_text(config.read_text() + "decision: {block_threshold: 0.6}\n")
        requests = 20
        for _ in range(requests):
            daemon.request_reload()
        sub.wait_for(lambda: sub.events("reload"), timeout_s=120)
        assert sub.events("reload")[0]["result"] == "ok"
        # A last change and request: once it is in force and published, the burst is long served.
        config.write_text(config.read_text().replace("block_threshold: 0.6", "block_threshold: 0.65"))
        daemon.request_reload()
        sub.wait_for(
            lambda: (
                daemon.runtime.config.decision.block_threshold == 0.65
                and sub.events("reload")[-1]["config_hash"] == daemon.runtime.config_hash
            ),
            timeout_s=120,
        )
        assert len(sub.events("reload")) < requests, "each request during a reload was served on its own"
    finally:
        running.stop()
        sub.close()


def test_an_unforeseen_exception_in_a_reload_keeps_the_running_config(tmp_path, monkeypatch):
    """Fault injection: the build of the new runtime runs out of memory (nothing in a file should get there, but
    a reload must survive anything)."""
    import inspector.daemon as daemon_module

    models = write_tiny_models(tmp_path / "models")
    port = free_port()
    config = write_config(tmp_path / "line.yaml", models, source=synthetic(), port=port)
    sub = Collector(port)
    running = _Running(config, sub)
    try:
        daemon = running.daemon
        running_hash = daemon.runtime.config_hash

        def out_of_memory(*args, **kwargs):
            raise MemoryError("injected")

        monkeypatch.setattr(daemon_module, "build", out_of_memory)
        config.write_text(config.read_text() + "decision: {block_threshold: 0.7}\n")
        daemon.request_reload()
        sub.wait_for(lambda: sub.events("reload"), timeout_s=120)
        event = sub.events("reload")[-1]
        assert event["result"] == "failed" and "MemoryError: injected" in event["error"], event
        assert event["config_hash"] == running_hash == daemon.runtime.config_hash
        seen = len(sub.verdicts())
        sub.wait_for(lambda: len(sub.verdicts()) > seen + 3, timeout_s=60)
        assert {v["config_hash"] for v in sub.verdicts()[seen:]} == {running_hash}
    finally:
        assert running.stop() == 0
        sub.close()
