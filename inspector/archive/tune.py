"""`inspector tune`: what would other thresholds have done to the frames the archive kept?

    inspector tune --archive DIR --config LINE.yaml [--set decision.block_threshold=0.7 ...]
                   [--sweep decision.pixel_threshold] [--out DIR] [--write-config NEW.yaml]

Every archived frame is re-decided from its stored network outputs (no network runs) through
inspector.decision, the daemon's own code (inspector.archive.redecide), twice: at the config in force (LINE.yaml;
records decided with the same thresholds must come out exactly as the daemon decided them, and tune says so)
and with the --set changes. It reports the verdicts that flip, each way and per defect class; where reviewers
marked frames (`inspector review`), precision and recall of both; a sweep of one threshold (a table, and a plot
when matplotlib is installed); and the `decision:` block to paste, or a whole config to reload (--write-config).

Counts are of archived frames. Passes are archived as a sample (archive.pass_fraction), so pass -> reject flips
are also given scaled to the line ("on the line, about"). Frames whose new decision needs segmenter output the
archive does not have (gated, not flagged when archived; or a pixel_threshold below the record's pixel floor)
are `unknown`, counted apart, never guessed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from inspector.archive import layout
from inspector.archive.layout import ArchiveFormatError, Record
from inspector.archive.marks import MarkStore
from inspector.archive.reader import ArchiveReader
from inspector.archive.redecide import Outcome, Redecider, outcome_matches
from inspector.config import (
    Config,
    ConfigError,
    load_config,
    parse_config,
    read_config_text,
    read_yaml,
    resolve_path,
)
from inspector.decision import load_ignore_mask

SETTABLE = ("decision.", "models.segmenter_mode")
SWEEPABLE = ("decision.block_threshold", "decision.pixel_threshold", "decision.min_area_px")


class TuneError(Exception):
    """A problem with tune's input (the message is the report)."""


# ----------------------------------------------------------------------------------------- overrides


def parse_sets(items: list[str]) -> dict[str, Any]:
    """['decision.block_threshold=0.7', 'decision.min_area_px_per_class={crack: 20}'] -> {dotted: value}.
    Values are YAML, so numbers, lists and mappings are written as in the config file."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TuneError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. decision.block_threshold=0.7")
        if not (key.startswith(SETTABLE[0]) or key == SETTABLE[1]):
            raise TuneError(
                f"--set {key}: tune re-decides with the decision thresholds only: decision.* (or models.segmenter_mode)"
            )
        try:
            out[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise TuneError(f"--set {key}: value is not valid YAML: {exc}") from None
    return out


def apply_sets(config_file: Path, sets: dict[str, Any]) -> Config:
    """The config file with the changes applied, validated like any config (errors name the field)."""
    try:  # the bounded reader of every line config (no alias bombs, no 1 GB files)
        data = read_yaml(read_config_text(config_file), str(config_file))[0] or {}
    except ConfigError as exc:
        raise TuneError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TuneError(f"{config_file}: cannot read file: {exc}") from None
    if not isinstance(data, dict):
        raise TuneError(f"{config_file}: top level must be a mapping of sections")
    for key, value in sets.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise TuneError(f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    try:
        return parse_config(yaml.safe_dump(data, sort_keys=False), f"{config_file} with --set")
    except ConfigError as exc:
        raise TuneError(str(exc)) from None


def with_value(config: Config, dotted: str, value: float) -> Config:
    section, name = dotted.split(".")
    if section != "decision":
        raise TuneError(f"cannot sweep {dotted}")
    field_type = type(getattr(config.decision, name))
    decision = config.decision.model_copy(update={name: field_type(value)})
    return config.model_copy(update={"decision": decision})


# -------------------------------------------------------------------------------------------- tallies


@dataclass
class Confusion:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    unknown: int = 0

    def add(self, truth_defective: bool, outcome: Outcome) -> None:
        if not outcome.known:
            self.unknown += 1
        elif outcome.result == "reject":
            if truth_defective:
                self.tp += 1
            else:
                self.fp += 1
        elif truth_defective:
            self.fn += 1
        else:
            self.tn += 1

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "unknown": self.unknown,
            "precision": self.precision,
            "recall": self.recall,
        }


@dataclass
class SweepPoint:
    value: float
    rejects: int = 0
    decided: int = 0
    unknown: int = 0
    reviewed: Confusion = field(default_factory=Confusion)


@dataclass
class Report:
    archive: str
    config: str
    sets: dict[str, Any]
    records: int = 0
    unreadable: int = 0
    same_thresholds: int = 0  # decided with the thresholds, mode and ignore mask of the config in force
    reproduced: int = 0
    mismatches: list[str] = field(default_factory=list)
    other_models: int = 0
    pass_to_reject: int = 0
    reject_to_pass: int = 0
    pass_to_reject_line: float = 0.0  # scaled by each sampled pass's 1 / pass_fraction
    unknown: int = 0
    by_class: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    flipped_ids: dict[str, list[str]] = field(default_factory=lambda: {"pass_to_reject": [], "reject_to_pass": []})
    reviewed: int = 0
    old: Confusion = field(default_factory=Confusion)
    new: Confusion = field(default_factory=Confusion)
    sweep_parameter: str = ""
    sweep_in_force: float = 0.0
    sweep_new: float = 0.0
    sweep: list[SweepPoint] = field(default_factory=list)
    decision: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "archive": self.archive,
            "config": self.config,
            "set": self.sets,
            "records": self.records,
            "unreadable": self.unreadable,
            "reproduction": {
                "same_thresholds": self.same_thresholds,
                "reproduced": self.reproduced,
                "mismatches": self.mismatches,
            },
            "other_models": self.other_models,
            "flips": {
                "pass_to_reject": self.pass_to_reject,
                "reject_to_pass": self.reject_to_pass,
                "pass_to_reject_on_the_line": round(self.pass_to_reject_line, 1),
                "by_class": {c: dict(v) for c, v in sorted(self.by_class.items())},
                "records": self.flipped_ids,
            },
            "unknown": self.unknown,
            "reviewed": {"records": self.reviewed, "old": self.old.to_dict(), "new": self.new.to_dict()},
            "sweep": {
                "parameter": self.sweep_parameter,
                "in_force": self.sweep_in_force,
                "new": self.sweep_new,
                "points": [
                    {
                        "value": p.value,
                        "rejects": p.rejects,
                        "decided": p.decided,
                        "unknown": p.unknown,
                        **{f"reviewed_{k}": v for k, v in p.reviewed.to_dict().items()},
                    }
                    for p in self.sweep
                ],
            },
            "decision": self.decision,
        }


# ------------------------------------------------------------------------------------------------ run


def _same_thresholds(record: Record, config: Config, mask: np.ndarray | None, reader: ArchiveReader) -> bool:
    if record.meta["decision_config"] != config.decision.model_dump(mode="json"):
        return False
    if record.meta["segmenter_mode"] != config.models.segmenter_mode:
        return False
    theirs = reader.ignore_mask(record.meta["config_hash"])
    if (theirs is None) != (mask is None):
        return False
    if theirs is None or mask is None:
        return True
    return theirs.shape == mask.shape and bool(np.array_equal(theirs, mask))


def _file_models(config: Config, config_file: Path) -> set[str] | None:
    """sha256 of the models the config names, from their manifests (None when they are not on this machine)."""
    from inspector.manifest import ManifestError, read_manifest

    specs = [config.models.recognizer] + ([config.models.segmenter] if config.models.segmenter else [])
    try:
        return {read_manifest(resolve_path(config_file, s.path), verify_hash=False).sha256 for s in specs}
    except (ManifestError, OSError):
        return None


def _sweep_values(parameter: str, explicit: list[float] | None, old: float, new: float) -> list[float]:
    if explicit:
        values = list(explicit)
    elif parameter == "decision.min_area_px":
        base = max(1, int(old))
        values = sorted({0, *(max(0, round(base * f)) for f in (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8))})
    else:
        values = [round(v, 3) for v in np.arange(0.05, 0.96, 0.05)]
    return sorted({float(v) for v in (*values, old, new)})


def run_tune(
    archive: Path,
    config_file: Path,
    sets: dict[str, Any],
    *,
    sweep: str | None = None,
    sweep_values: list[float] | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
    progress: Any = None,
) -> Report:
    try:
        old_cfg = load_config(config_file)
    except ConfigError as exc:
        raise TuneError(str(exc)) from None
    new_cfg = apply_sets(config_file, sets) if sets else old_cfg
    try:
        reader = ArchiveReader(archive)
    except (FileNotFoundError, ArchiveFormatError) as exc:
        raise TuneError(str(exc)) from None
    marks = MarkStore(archive).all()

    def mask_file(cfg: Config) -> Path | None:
        m = cfg.decision.ignore_regions.mask
        return resolve_path(config_file, m) if m else None

    old = Redecider(reader, old_cfg.decision, old_cfg.models.segmenter_mode, mask_file(old_cfg))
    new = Redecider(reader, new_cfg.decision, new_cfg.models.segmenter_mode, mask_file(new_cfg))
    if sweep is None:
        sweep = next((k for k in sets if k in SWEEPABLE), "decision.block_threshold")
    if sweep not in SWEEPABLE:
        raise TuneError(f"--sweep {sweep}: one of {', '.join(SWEEPABLE)}")
    name = sweep.split(".")[1]
    values = _sweep_values(sweep, sweep_values, getattr(old_cfg.decision, name), getattr(new_cfg.decision, name))
    points = [SweepPoint(v) for v in values]
    sweepers = [
        Redecider(reader, with_value(new_cfg, sweep, v).decision, new_cfg.models.segmenter_mode, mask_file(new_cfg))
        for v in values
    ]
    report = Report(
        str(archive),
        str(config_file),
        sets,
        sweep_parameter=sweep,
        sweep_in_force=float(getattr(old_cfg.decision, name)),
        sweep_new=float(getattr(new_cfg.decision, name)),
    )
    report.sweep = points
    report.decision = new_cfg.decision.model_dump(mode="json")
    file_models = _file_models(old_cfg, config_file)
    old_mask_cache: dict[tuple[int, int], np.ndarray | None] = {}

    summaries = [
        s
        for s in reversed(reader.summaries())
        if (since_ns is None or s.t >= since_ns) and (until_ns is None or s.t < until_ns)
    ]
    for n, record in enumerate(reader.records([s.id for s in summaries])):
        if progress is not None and n % 200 == 0:
            progress(n, len(summaries))
        try:
            was = old(record)
            now = new(record)
            swept = [s(record) for s in sweepers]
        except (ArchiveFormatError, ValueError) as exc:
            report.unreadable += 1
            if progress is not None:
                print(f"tune: {record.id}: {exc}", file=sys.stderr)
            continue
        report.records += 1
        frame = record.frame_size
        if frame not in old_mask_cache:
            f = mask_file(old_cfg)
            old_mask_cache[frame] = load_ignore_mask(f, frame) if f else None
        if _same_thresholds(record, old_cfg, old_mask_cache[frame], reader):
            report.same_thresholds += 1
            if outcome_matches(was, record):
                report.reproduced += 1
            else:
                report.mismatches.append(record.id)
        if file_models is not None and not set(record.meta["model_hashes"].values()) <= file_models:
            report.other_models += 1
        if not now.known:
            report.unknown += 1
        elif was.known and was.result != now.result:
            if now.result == "reject":
                report.pass_to_reject += 1
                report.pass_to_reject_line += _weight(record, reader)
                report.flipped_ids["pass_to_reject"].append(record.id)
                for c in now.classes:
                    report.by_class[c]["pass_to_reject"] += 1
            else:
                report.reject_to_pass += 1
                report.flipped_ids["reject_to_pass"].append(record.id)
                for c in was.classes:
                    report.by_class[c]["reject_to_pass"] += 1
        mark = marks.get(record.id)
        if mark is not None:
            report.reviewed += 1
            truth = mark.truth == "defective"
            report.old.add(truth, was)
            report.new.add(truth, now)
        for point, outcome in zip(points, swept, strict=True):
            if not outcome.known:
                point.unknown += 1
                if mark is not None:
                    point.reviewed.unknown += 1
                continue
            point.decided += 1
            point.rejects += outcome.result == "reject"
            if mark is not None:
                point.reviewed.add(mark.truth == "defective", outcome)
    if progress is not None:
        progress(len(summaries), len(summaries))
    return report


def _weight(record: Record, reader: ArchiveReader) -> float:
    """How many frames on the line an archived frame stands for: 1 / pass_fraction for a sampled pass."""
    if record.meta.get("kept_as") != "sample":
        return 1.0
    try:
        fraction = reader.config_snapshot(record.meta["config_hash"])["config"]["archive"]["pass_fraction"]
    except (ArchiveFormatError, KeyError):
        return 1.0
    return 1.0 / fraction if fraction else 1.0


# --------------------------------------------------------------------------------------------- output


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def format_report(report: Report, changes: dict[str, Any]) -> str:
    r = report
    out = [f"archive {r.archive}: {r.records} frames re-decided from their stored outputs"]
    if r.unreadable:
        out.append(f"  {r.unreadable} records could not be read (see above)")
    if r.same_thresholds:
        ok = "exactly" if r.reproduced == r.same_thresholds else "NOT"
        out.append(
            f"at the config in force ({r.config}): {r.reproduced} of {r.same_thresholds} verdicts decided with these "
            f"thresholds reproduced {ok}"
        )
        if r.mismatches:
            out.append(f"  differ: {', '.join(r.mismatches[:10])}{' …' if len(r.mismatches) > 10 else ''}")
    other = r.records - r.same_thresholds
    if other:
        out.append(f"  {other} frames were decided under other thresholds, segmenter mode or ignore mask")
    if r.other_models:
        out.append(
            f"  {r.other_models} frames were scored by other models than the config names: their scores say nothing "
            "about the models now in force"
        )
    if changes:
        out.append("with " + ", ".join(f"{k}={json.dumps(v)}" for k, v in changes.items()) + ":")
        out.append(
            f"  pass -> reject: {r.pass_to_reject} archived frames (on the line, about {r.pass_to_reject_line:.0f})"
        )
        out.append(f"  reject -> pass: {r.reject_to_pass}")
        for cls, counts in sorted(r.by_class.items()):
            out.append(
                f"    {cls:<12} pass -> reject {counts['pass_to_reject']:>5}"
                f"   reject -> pass {counts['reject_to_pass']:>5}"
            )
        if r.unknown:
            out.append(
                f"  unknown: {r.unknown} frames would need segmenter output the archive does not have (not counted)"
            )
    if r.reviewed:
        out.append(f"reviewed frames ({r.reviewed}):")
        out.append(
            f"  in force: precision {_pct(r.old.precision)}  recall {_pct(r.old.recall)}  "
            f"(TP {r.old.tp} FP {r.old.fp} FN {r.old.fn} TN {r.old.tn})"
        )
        if changes:
            out.append(
                f"  new:      precision {_pct(r.new.precision)}  recall {_pct(r.new.recall)}  "
                f"(TP {r.new.tp} FP {r.new.fp} FN {r.new.fn} TN {r.new.tn}, unknown {r.new.unknown})"
            )
    else:
        out.append("no reviewed frames: mark some with `inspector review` for precision and recall")
    out.append(f"sweep of {r.sweep_parameter}:")
    out.append("  value    rejects  unknown  precision  recall")
    for p in r.sweep:
        out.append(
            f"  {p.value:<8g} {p.rejects:>7}  {p.unknown:>7}  "
            f"{_pct(p.reviewed.precision):>9}  {_pct(p.reviewed.recall):>6}"
        )
    return "\n".join(out)


def decision_block(decision: dict[str, Any], note: str) -> str:
    body = yaml.safe_dump({"decision": decision}, sort_keys=False, default_flow_style=None)
    return f"# {note}\n{body}"


def splice_decision(text: str, block: str) -> str:
    """The config text with its top-level `decision:` section replaced by `block` (other sections and their
    comments kept as they are). Appended when the file has none."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines = text.splitlines(keepends=True)
    if root is None or not isinstance(root, yaml.MappingNode):
        raise TuneError("the config file's top level is not a mapping")
    for key, value in root.value:
        if key.value != "decision":
            continue
        first = key.start_mark.line
        last = _last_content_line(value)
        # Keep the comment lines just above `decision:` (they describe the section to whoever reads the file).
        return "".join(lines[:first]) + block + "".join(lines[last + 1 :])
    sep = "" if text.endswith("\n") or not text else "\n"
    return text + sep + "\n" + block


def _last_content_line(node: yaml.Node) -> int:
    if isinstance(node, yaml.MappingNode):
        items = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        items = list(node.value)
    else:
        items = []
    if items and not getattr(
        node, "flow_style", False
    ):  # a block collection's end mark is the next token: use its last child's
        return max(_last_content_line(n) for n in items)
    end = node.end_mark
    return end.line if end.column > 0 else end.line - 1


def plot_sweep(report: Report, path: Path) -> bool:
    """The sweep as a PNG: precision and recall on reviewed frames, and the share of archived frames rejected."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    xs = [p.value for p in report.sweep]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    share = [p.rejects / p.decided if p.decided else np.nan for p in report.sweep]
    ax.plot(xs, share, color="0.45", ls="--", marker=".", label="archived frames rejected")
    if report.reviewed:
        ax.plot(xs, [_nan(p.reviewed.precision) for p in report.sweep], marker="o", label="precision (reviewed)")
        ax.plot(xs, [_nan(p.reviewed.recall) for p in report.sweep], marker="s", label="recall (reviewed)")
    name = report.sweep_parameter.split(".")[1]
    ax.axvline(report.sweep_in_force, color="0.2", lw=1, label=f"in force: {name} = {report.sweep_in_force:g}")
    if report.sweep_new != report.sweep_in_force:
        ax.axvline(report.sweep_new, color="tab:red", lw=1, label=f"new: {name} = {report.sweep_new:g}")
    ax.set_xlabel(report.sweep_parameter)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    title = f"{report.records} archived frames, {report.reviewed} reviewed"
    unknown = max((p.unknown for p in report.sweep), default=0)
    if unknown:
        title += f" (up to {unknown} unknown: no segmenter output)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _nan(x: float | None) -> float:
    return float("nan") if x is None else x


# ------------------------------------------------------------------------------------------------ CLI


def _time_arg(text: str) -> int:
    from datetime import datetime, timezone

    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO date/time: {text!r} (e.g. 2026-12-01 or 2026-12-01T06:00)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1e9)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tune",
        help="re-decide archived frames at other thresholds: flips, precision/recall, a sweep, a decision block",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--archive", required=True, type=Path, help="archive directory (archive.path of the line)")
    p.add_argument("--config", required=True, type=Path, help="the line config in force (YAML)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a changed threshold, e.g. decision.block_threshold=0.7 (repeatable; values are YAML)",
    )
    p.add_argument(
        "--sweep",
        choices=SWEEPABLE,
        help="threshold to sweep (default: the first one --set changes, else decision.block_threshold)",
    )
    p.add_argument("--sweep-values", help="comma-separated values to sweep (default: a grid over its range)")
    p.add_argument("--since", type=_time_arg, help="only frames acquired at or after this UTC time (ISO 8601)")
    p.add_argument("--until", type=_time_arg, help="only frames acquired before this UTC time (ISO 8601)")
    p.add_argument(
        "--out", type=Path, help="folder for report.json, sweep.png and decision.yaml (default: ./tune-<UTC time>)"
    )
    p.add_argument("--write-config", type=Path, help="also write the config with the new decision block here")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    try:
        sets = parse_sets(args.sets)
        values = None
        if args.sweep_values:
            try:
                values = [float(v) for v in args.sweep_values.split(",") if v.strip()]
            except ValueError:
                raise TuneError(f"--sweep-values {args.sweep_values!r}: comma-separated numbers") from None
        interactive = sys.stderr.isatty()

        def progress(done: int, total: int) -> None:
            if interactive:
                print(f"\rtune: {done}/{total} frames", end="" if done < total else "\n", file=sys.stderr)

        report = run_tune(
            args.archive,
            args.config,
            sets,
            sweep=args.sweep,
            sweep_values=values,
            since_ns=args.since,
            until_ns=args.until,
            progress=progress,
        )
        new_cfg = apply_sets(args.config, sets) if sets else load_config(args.config)
    except TuneError as exc:
        print(f"inspector tune: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(f"tune-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    out.mkdir(parents=True, exist_ok=True)
    note = (
        f"decision: written by inspector tune {layout.iso_utc(time.time_ns())[:19]}Z from {report.records} archived "
        f"frames of {args.archive}" + (f" with {', '.join(f'{k}={v}' for k, v in sets.items())}" if sets else "")
    )
    block = decision_block(report.decision, note)
    (out / "decision.yaml").write_text(block)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    plotted = plot_sweep(report, out / "sweep.png")
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(format_report(report, sets))
        print()
        print(block, end="")
        print()
        files = "report.json, decision.yaml" + (", sweep.png" if plotted else "")
        print(f"written to {out}/: {files}")
        if not plotted:
            print("(sweep.png needs matplotlib: pip install 'inspector[archive]')")
    if args.write_config:
        text = splice_decision(args.config.read_text(encoding="utf-8"), block)
        try:
            check = parse_config(text, str(args.write_config))
        except ConfigError as exc:  # never write a config the daemon would refuse
            print(f"inspector tune: the config with the new decision block does not validate:\n{exc}", file=sys.stderr)
            return 2
        if check.decision != new_cfg.decision:
            print(
                "inspector tune: the decision block did not splice cleanly; paste decision.yaml by hand",
                file=sys.stderr,
            )
            return 2
        target = args.write_config.resolve()
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
        layout.atomic_write(target, text.encode(), target.parent, mode=mode)
        print(
            f"config with the new thresholds: {args.write_config} "
            f"(inspector check-config {args.write_config}, then install it and systemctl reload)"
        )
        if new_cfg.models.segmenter_mode != check.models.segmenter_mode:
            print(f"note: set models.segmenter_mode: {new_cfg.models.segmenter_mode} in it by hand")
    if report.mismatches:
        print(
            f"inspector tune: {len(report.mismatches)} frames decided with these thresholds did not reproduce: "
            "the archive and this version of the decision code disagree",
            file=sys.stderr,
        )
        return 1
    return 0
