"""`inspector camera list` and `inspector camera features DEVICE`: what an integrator needs to write source.features.

    inspector camera list [--cti PATH ...] [--json]
    inspector camera features DEVICE [--cti PATH ...] [--all] [--json]

DEVICE is matched like source.device (serial number, id or user-defined name). Without --cti the viky.cti of the
installed genicam package is used (a simulated camera), exactly as the genicam source does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from inspector.sources import SourceError


def add_parser(subparsers: Any) -> None:
    """Register `camera list` and `camera features` on the `inspector` CLI's subparsers."""
    camera = subparsers.add_parser("camera", help="list GenICam cameras and their features (GenTL via harvesters)")
    sub = camera.add_subparsers(dest="camera_command", required=True)
    cti_help = "GenTL producer (.cti); repeat for several (default: viky.cti from the genicam package)"

    p_list = sub.add_parser("list", help="devices found: vendor, model, serial, id, user-defined name, access")
    p_list.add_argument("--cti", action="append", default=[], metavar="PATH", help=cti_help)
    p_list.add_argument("--json", action="store_true", help="one JSON object per device, one a line")
    p_list.set_defaults(func=run(cmd_list))

    p_feat = sub.add_parser("features", help="a device's features: type, access, value, range or entries")
    p_feat.add_argument("device", metavar="DEVICE", help="serial number, id or user-defined name")
    p_feat.add_argument("--cti", action="append", default=[], metavar="PATH", help=cti_help)
    p_feat.add_argument("--all", action="store_true", help="also invisible (implementation) nodes")
    p_feat.add_argument("--json", action="store_true", help="one JSON object per feature, one a line")
    p_feat.set_defaults(func=run(cmd_features))


def run(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A camera command as the CLI runs it: a missing camera extra or a camera problem is one line, exit 2."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            from inspector.sources.genicam.gentl import require

            require()  # before anything imports harvesters' names
            return command(args)
        except SourceError as exc:
            print(f"inspector camera: {exc}", file=sys.stderr)
            return 2

    return guarded


@contextlib.contextmanager
def _harvester(ctis: list[str]) -> Iterator[tuple[Any, list[str]]]:
    from inspector.sources.genicam.gentl import Harvester, default_cti, quiet_harvesters, require

    require()

    quiet_harvesters()
    paths = ctis or [default_cti()]
    h = Harvester()
    try:
        for path in paths:
            if not os.path.isfile(path):
                raise SourceError(f"GenTL producer {path} does not exist")
            h.add_file(path)
        h.update()
        yield h, paths
    finally:
        h.reset()


def cmd_list(args: argparse.Namespace) -> int:
    from inspector.sources.genicam.devices import enumerate_devices

    with _harvester(args.cti) as (h, paths):
        devices = enumerate_devices(h)
    if args.json:
        for d in devices:
            row = {k: getattr(d, k) for k in ("vendor", "model", "serial_number", "id", "user_defined_name")}
            row.update(access_status=d.access_status, tl_type=d.tl_type, cti=d.cti)
            print(json.dumps(row))
        return 0 if devices else 1
    if not devices:
        print(f"no GenICam device found through {', '.join(paths)}", file=sys.stderr)
        return 1
    header = ("VENDOR", "MODEL", "SERIAL", "ID", "USER NAME", "ACCESS", "CTI")
    rows = [
        (d.vendor, d.model, d.serial_number, d.id, d.user_defined_name or "-", d.access_status, d.cti) for d in devices
    ]
    _table(header, rows)
    return 0


def describe_node(node: Any) -> dict[str, Any]:
    """Name, type, access, value and what it accepts, for one node of a node map."""
    from inspector.sources.genicam.features import ACCESS_NAMES, TYPE_NAMES, allowed_text

    inner = node.node
    kind = int(inner.principal_interface_type)
    access = int(inner.get_access_mode())
    row = {
        "name": inner.name,
        "type": TYPE_NAMES.get(kind, str(kind)),
        "access": ACCESS_NAMES.get(access, str(access)),
        "value": None,
        "allowed": "",
    }
    if access in (3, 4) and kind in (2, 3, 5, 6, 9):  # readable Integer/Boolean/Float/String/Enumeration
        try:
            row["value"] = node.value
        except Exception as exc:
            row["value"] = f"<{exc}>"
    if access in (2, 3, 4) and kind in (2, 3, 5, 6, 9):  # not for nodes unavailable now: their limits fail
        row["allowed"] = allowed_text(node)
    return row


def cmd_features(args: argparse.Namespace) -> int:
    from inspector.sources.genicam.devices import enumerate_devices, select_device

    with _harvester(args.cti) as (h, paths):
        try:
            entry = select_device(enumerate_devices(h), args.device, paths)
        except SourceError as exc:
            print(f"inspector camera features: {exc}", file=sys.stderr)
            return 2
        ia = h.create(entry.info)
        with ia:
            rows = []
            for node in ia.remote_device.node_map.nodes:
                inner = node.node
                kind = int(inner.principal_interface_type)
                if kind in (7, 8, 10, 11):  # registers, categories, enum entries, ports: not settable features
                    continue
                if not args.all and (not inner.is_feature() or int(inner.visibility) >= 3):
                    continue
                rows.append(describe_node(node))
    if args.json:
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    print(f"{entry.label()}\n")
    _table(
        ("FEATURE", "TYPE", "ACCESS", "VALUE", "ALLOWED"),
        [
            (r["name"], r["type"], r["access"], "" if r["value"] is None else str(r["value"]), r["allowed"])
            for r in rows
        ],
    )
    print("\nUse in the line config as:  source: {features: [{name: Width, value: 800}, ...]}")
    return 0


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inspector")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
