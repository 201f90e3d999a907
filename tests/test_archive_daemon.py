"""The real daemon writing a real archive: every frame chosen for the archive is written or counted (never a
silent loss), records hold what was published, a stalled disk never holds up inspection, and `inspector tune`
on an archive made by the demo (its real models) reproduces every verdict exactly at the config in force."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from archive_helpers import DEMO_CONFIG
from daemon_helpers import Collector, free_port, scrape, synthetic, total, write_config
from tiny_models import write_tiny_models

from inspector import cli
from inspector.archive.reader import ArchiveReader
from inspector.archive.store import ArchiveStore
from inspector.config import ArchiveConfig, load_config
from inspector.daemon import Daemon

# A guard against a hang, not a speed limit (the quota test runs until the quota has had to delete).
pytestmark = pytest.mark.timeout(900)


def _config(tmp_path: Path, archive: str, *, rate: float | None = None, pool: int = 16) -> Path:
    # threshold 160: the brightest parts of some synthetic tiles count as defects, so both verdicts occur
    models = write_tiny_models(tmp_path / "models", threshold=160)
    port = free_port()
    return write_config(
        tmp_path / "line.yaml",
        models,
        source=synthetic(rate=rate, pool=pool),
        port=port,
        extra=f"archive:\n{archive}\n",
    )


def _run(config: Path, n: int, before_start=None):
    port = int(config.read_text().split("tcp://127.0.0.1:")[1].split('"')[0])
    sub = Collector(port)

    def hook(d: Daemon) -> None:
        if before_start is not None:
            before_start(d)
        sub.wait_subscribed(d)

    daemon = Daemon(config, max_frames=n, console=False, install_signals=False, before_start=hook)
    daemon.start()
    return daemon, sub


def _expected_kept(verdicts: list[dict], pass_fraction: float) -> int:
    """What the archive must take: every reject/late timeout, and the evenly spread share of passes."""
    # A timeout with a recognizer score was decided, too late: the archive keeps those (the early ones never ran).
    rejects = sum(
        v["reason"] == "defect" or (v["reason"] == "timeout" and v["recognizer_score"] is not None) for v in verdicts
    )
    acc, passes = 0.0, 0
    for v in verdicts:
        if v["reason"] == "ok":
            acc += pass_fraction
            if acc >= 1.0:
                acc -= 1.0
                passes += 1
    return rejects + passes


def test_the_daemon_archives_what_it_publishes_and_counts_what_it_cannot(tmp_path):
    root = tmp_path / "archive"
    config = _config(tmp_path, f"  enabled: true\n  path: {root}\n  pass_fraction: 0.2\n  keep_free_mb: 0")
    daemon, sub = _run(config, 200)
    assert daemon.wait() == 0
    sub.close()
    verdicts = sub.verdicts()
    assert [v["seq"] for v in verdicts] == list(range(200))
    writer = daemon.archive
    kept = _expected_kept(verdicts, 0.2)
    assert kept > 20
    assert writer.written + sum(writer.dropped.values()) == kept, (writer.written, writer.dropped, kept)
    reader = ArchiveReader(root)
    published = {v["seq"]: v for v in verdicts}
    summaries = reader.summaries()
    assert len(summaries) == writer.written
    for rec in reader.records([s.id for s in summaries]):
        v = rec.meta["verdict"]
        assert v == published[v["seq"]], "the record holds exactly the verdict that was published"
        assert rec.image().shape == (128, 128, 1)
    assert {s.result for s in summaries} == {"pass", "reject"}


def test_a_stalled_disk_never_holds_up_inspection(tmp_path):
    root = tmp_path / "archive"
    config = _config(
        tmp_path, f"  enabled: true\n  path: {root}\n  pass_fraction: 1.0\n  pool_slots: 4\n  keep_free_mb: 0"
    )
    release = threading.Event()

    class StalledStore(ArchiveStore):
        """A disk whose writes hang until the test lets them go (a dead NFS mount, a dying SSD)."""

        def put(self, rid, data, summary):
            release.wait(120)
            super().put(rid, data, summary)

    def stall(d: Daemon) -> None:
        d.archive.store = _adopt(d.archive, StalledStore)

    daemon, sub = _run(config, 150, before_start=stall)
    port = daemon.metrics_port
    # Every frame gets its verdict while the archive's writer hangs on its first write.
    sub.wait_for(lambda: len(sub.verdicts()) == 150, timeout_s=120)
    samples = scrape(port)
    release.set()
    assert daemon.wait() == 0
    sub.close()
    verdicts = sub.verdicts()
    assert [v["seq"] for v in verdicts] == list(range(150))
    assert all(v["reason"] in ("ok", "defect") for v in verdicts), "nothing timed out or overloaded"
    dropped = total(samples, "inspector_archive_dropped_total", cause="pool_full")
    assert dropped >= 150 - 3 - 5, (
        "the pool (2 slots) and the record in the writer's hands took a few; the rest dropped"
    )
    writer = daemon.archive
    assert writer.written + sum(writer.dropped.values()) == 150
    alarms = [e for e in sub.events("archive") if e.get("state") == "dropping"]
    assert alarms and alarms[0]["dropped"] > 0, "the drops were announced on the broadcast stream"


def _adopt(writer, cls):
    """A store of class `cls` that takes over the open directory (and its lock) of the writer's store."""
    old = writer.store
    new = cls(old.root)
    new._lock_fd = old._lock_fd
    return new


def test_quota_holds_in_the_daemon(tmp_path):
    root = tmp_path / "archive"
    config = _config(
        tmp_path,
        f"  enabled: true\n  path: {root}\n  pass_fraction: 1.0\n  quota_mb: 1\n  keep_free_mb: 0\n  pool_slots: 64",
        rate=100.0,  # a pace the writer keeps up with on a shared box: this test is about the quota, not drops
    )
    # Run until the quota has had to delete, however fast this box's disk and writer are (a fixed frame count
    # left the quota untouched when a loaded box's writer dropped most frames as pool_full).
    # The wait gives up only when the writer stops making progress: on a loaded box (fsync per record) the
    # first 1 MiB took over three minutes, past any fixed bound that is not a guess.
    daemon, sub = _run(config, 1_000_000)
    written, progress_at = -1, time.monotonic()
    while daemon.archive.deleted == 0 and time.monotonic() - progress_at < 60:
        if daemon.archive.written != written:
            written, progress_at = daemon.archive.written, time.monotonic()
        time.sleep(0.2)
    daemon.stop()
    assert daemon.wait() == 0
    sub.close()
    assert daemon.archive.deleted > 0, f"quota never reached: {daemon.archive.written} records written"
    on_disk = sum(p.stat().st_size for p in (root / "records").rglob("*.zip"))
    assert 0 < on_disk <= 1 << 20
    summaries = list(ArchiveReader(root).summaries())
    newest_written = max(s.seq for s in summaries)
    assert min(s.seq for s in summaries) > 0, "the oldest records are the ones deleted"
    assert newest_written >= daemon.archive.written - 1


@pytest.mark.slow
def test_tune_reproduces_every_verdict_of_the_demo_exactly(tmp_path, capsys, monkeypatch):
    import inspector.daemon

    # A loaded box writes a few records a second: let the writer finish what is queued at stop (on a quiet box
    # it is done at once), so the reproduction covers every frame instead of what 5 s allowed.
    monkeypatch.setattr(inspector.daemon, "ARCHIVE_CLOSE_S", 300.0)
    root = tmp_path / "archive"
    demo = load_config(DEMO_CONFIG)
    port = free_port()
    overrides = {
        "source": demo.source.model_copy(update={"rate_hz": None}),
        "publish": demo.publish.model_copy(
            update={
                "broadcast": demo.publish.broadcast.model_copy(update={"bind": f"tcp://127.0.0.1:{port}"}),
                "actuator": None,
            }
        ),
        "metrics": demo.metrics.model_copy(update={"enabled": False}),
        # A loaded test box must not turn frames into timeouts (those are not inspected, so not archived).
        "pipeline": demo.pipeline.model_copy(update={"deadline_ms": 60000.0}),
        # Every frame, passes included, so the reproduction covers both sides of every threshold.
        "archive": ArchiveConfig(enabled=True, path=str(root), pass_fraction=1.0, pool_slots=256, keep_free_mb=0),
        "models": demo.models.model_copy(
            update={"onnxruntime": demo.models.onnxruntime.model_copy(update={"intra_op_threads": 1})}
        ),
    }
    daemon = Daemon(DEMO_CONFIG, max_frames=120, console=False, install_signals=False, config_overrides=overrides)
    daemon.start()
    assert daemon.wait() == 0
    assert daemon.pipeline.counters.not_inspected == {}, daemon.pipeline.counters.not_inspected
    assert daemon.archive.written + sum(daemon.archive.dropped.values()) == 120
    written = daemon.archive.written
    assert written >= 100, daemon.archive.dropped  # pool_full drops only: the pool holds 256
    out = tmp_path / "tune"
    capsys.readouterr()
    rc = cli.main(["tune", "--archive", str(root), "--config", str(DEMO_CONFIG), "--out", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    rep = report["reproduction"]
    assert report["records"] == written
    assert rep["same_thresholds"] == written and rep["reproduced"] == written and rep["mismatches"] == []
    assert report["flips"]["pass_to_reject"] == report["flips"]["reject_to_pass"] == 0
    assert {"decision.yaml", "report.json"} <= {p.name for p in out.iterdir()}
    reader = ArchiveReader(root)
    results = [s.result for s in reader.summaries()]
    assert "pass" in results and "reject" in results, "the demo archive has both kinds"


def test_archive_settings_that_need_a_restart_are_refused_on_reload(tmp_path):
    root = tmp_path / "archive"
    config = _config(tmp_path, f"  enabled: true\n  path: {root}\n  keep_free_mb: 0", rate=50.0)
    daemon, sub = _run(config, None)
    try:
        text = config.read_text()
        config.write_text(text.replace("keep_free_mb: 0", "keep_free_mb: 0\n  pool_slots: 4"))
        assert daemon.reload() == "invalid"
        config.write_text(text.replace("keep_free_mb: 0", "keep_free_mb: 0\n  pass_fraction: 0.5\n  quota_mb: 5"))
        assert daemon.reload() == "ok"
        assert daemon.archive.cfg.quota_mb == 5
        assert daemon.runtime.archive.pass_fraction == 0.5
        time.sleep(0.2)
    finally:
        daemon.stop()
        daemon.wait()
        sub.close()
