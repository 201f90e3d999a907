"""`inspector`: the command line of the runtime.

    inspector run --config FILE [--max-frames N]     the daemon (what systemd runs)
    inspector check-config FILE                       validate a line config and the models it names
    inspector listen --config FILE [--count N] [--json]   print the verdicts that config publishes
    inspector keys generate DIR [--name NAME]         a CURVE key pair for publish.curve and its clients
    inspector camera list | features DEVICE           GenICam cameras (integrators writing a config)
    inspector review --archive DIR                    the archive's review page (local web server)
    inspector tune --archive DIR --config FILE [--set decision.block_threshold=0.7 ...]
                                                      re-decide archived frames at other thresholds
    inspector gateway --config FILE                   the PLC gateway: OPC UA and Modbus TCP (docs/PLC.md)

Exit status: 0 ok; 2 bad config; 3 model/backend problem (for the gateway: the plc extra missing); 4 source
or socket/port problem; 1 a runtime failure (the source failed for good while running) or a start-up failure
none of the others foresaw. check-config uses 0 or 2 for anything it finds wrong. Errors are one line per
problem on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from inspector import camera_cli
from inspector.config import ConfigError, load_config, resolve_path

log = logging.getLogger("inspector")


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if root.handlers:  # embedded (tests, benchmarks): the host decides where logs go
        return
    # Under systemd the journal timestamps each line; elsewhere a timestamp helps.
    journal = "JOURNAL_STREAM" in os.environ
    fmt = "%(levelname)s %(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from inspector.daemon import Daemon

    if args.max_frames is not None and args.max_frames < 1:
        print("inspector run: --max-frames must be >= 1", file=sys.stderr)
        return 2
    daemon = Daemon(args.config, max_frames=args.max_frames, console=not args.no_console)
    return daemon.run()


def check_config(path: str | Path) -> list[str]:
    """Problems start-up would refuse, one line each (empty = it would start): `inspector.runtime.check`."""
    from inspector.runtime import check

    return check(path)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        problems = check_config(args.file)
    except Exception as exc:  # check() turns every foreseen problem into lines; this is the last resort
        log.debug("check-config failed", exc_info=True)
        problems = [f"{args.file}: {type(exc).__name__}: {' '.join(str(exc).split())}"]
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        return 2
    print(f"{args.file}: ok")
    return 0


def connect_endpoint(bind: str) -> str:
    """The address a subscriber on this host connects to for a bind address (wildcards -> loopback)."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if bind.startswith(wildcard):
            return "tcp://127.0.0.1:" + bind[len(wildcard) :]
    return bind


def cmd_listen(args: argparse.Namespace) -> int:
    from inspector.curve import ClientKeys, CurveKeyError, public_key_file
    from inspector.publish import listen

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    endpoint = args.endpoint or connect_endpoint(config.publish.broadcast.bind)
    keys = None
    curve = config.publish.curve
    if args.client_key or curve is not None:
        if not args.client_key:
            print(
                "inspector listen: the daemon uses CURVE (publish.curve): give --client-key, the NAME.key_secret "
                "file of a client key pair among publish.curve.authorised_keys",
                file=sys.stderr,
            )
            return 2
        server = args.server_key
        if server is None and curve is not None:
            server = public_key_file(resolve_path(args.config, curve.secret_key))
        if server is None:
            print("inspector listen: --client-key needs --server-key (the daemon's public NAME.key)", file=sys.stderr)
            return 2
        try:
            keys = ClientKeys.load(args.client_key, server)
        except CurveKeyError as exc:
            print(f"inspector listen: {exc}", file=sys.stderr)
            return 2
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how an integrator stops listening
        listen(endpoint, config.topic, args.count, args.json, events=args.events, timeout_s=args.timeout, curve=keys)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from inspector.curve import CurveKeyError, generate

    try:
        public, secret = generate(args.dir, args.name)
    except (CurveKeyError, OSError) as exc:
        print(f"inspector keys: {exc}", file=sys.stderr)
        return 2
    print(f"{public}  public key: give it to the other side (authorised_keys, or server key for clients)")
    print(f"{secret}  secret key (mode 600): stays here; chown it to the user that runs the daemon or client")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from inspector.gateway.config import load_gateway_config

    if args.print_register_map:
        from inspector.gateway.modbus import register_map_markdown

        print(register_map_markdown(), end="")
        return 0
    if not args.config:
        print("inspector gateway: --config is required", file=sys.stderr)
        return 2
    try:
        config = load_gateway_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from inspector.gateway.service import run

    return run(config, args.config)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inspector", description="Real-time visual defect inspection.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run the inspection daemon on a line config",
        description="Run the inspection daemon on a line config (what systemd runs). Exit 0 after a clean stop; "
        "2 bad config, 3 model/backend, 4 source/socket/port, 1 source failed while running (or a start-up "
        "failure none of those foresaw). One line per problem, never a traceback.",
    )
    run.add_argument("--config", required=True, help="line config (YAML)")
    run.add_argument(
        "--max-frames",
        type=int,
        help="stop cleanly after N acquired frames, every verdict published (default: run until stopped)",
    )
    run.add_argument("--no-console", action="store_true", help="no status line/log (the metrics still run)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check-config",
        help="what start-up would refuse: the config, its models run once, its endpoints",
        description="Run start-up's validation without starting: the YAML, every model opened in its backend "
        "and run once on a blank frame against its manifest, the decision settings against the models, distinct "
        "endpoints, the source's files. Binds no socket, opens no camera. Exit 0 if it would start, else 2, one "
        "line per problem.",
    )
    check.add_argument("file", help="line config (YAML)")
    check.set_defaults(func=cmd_check_config)

    lis = sub.add_parser(
        "listen",
        help="print the verdicts a line config publishes (a ZeroMQ subscriber)",
        description="Subscribe to a line's broadcast stream and print its verdicts; gaps in seq (verdicts lost on "
        "the way) and daemon restarts (a new run_id: seq starts again, not a loss) are reported on stderr.",
    )
    lis.add_argument("--config", required=True, help="line config whose broadcast endpoint and topic to use")
    lis.add_argument("--count", type=int, help="stop after N verdicts (default: until interrupted)")
    lis.add_argument("--json", action="store_true", help="one JSON object a line (the wire message)")
    lis.add_argument("--events", action="store_true", help="also print events (start, stop, reload, camera)")
    lis.add_argument("--endpoint", help="connect here (default: the config's broadcast address, on this host)")
    lis.add_argument("--timeout", type=float, help="stop when nothing arrived for this many seconds (default: wait)")
    lis.add_argument(
        "--client-key",
        help="CURVE: this client's NAME.key_secret (its public NAME.key among publish.curve.authorised_keys)",
    )
    lis.add_argument(
        "--server-key",
        help="CURVE: the daemon's public key file (default: publish.curve.secret_key's NAME.key next to it)",
    )
    lis.set_defaults(func=cmd_listen)

    keys = sub.add_parser(
        "keys",
        help="ZeroMQ CURVE key pairs for publish.curve and its clients",
        description="Make a CURVE key pair: DIR/NAME.key (public, mode 644) and DIR/NAME.key_secret (mode 600); "
        "an existing key is never overwritten. See docs/OPERATIONS.md, 'Securing the ZeroMQ sockets'.",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="make DIR/NAME.key and DIR/NAME.key_secret")
    gen.add_argument("dir", help="directory for the two files (created if missing)")
    gen.add_argument("--name", default="inspector", help="file name stem (default: inspector)")
    gen.set_defaults(func=cmd_keys)

    gw = sub.add_parser("gateway", help="the PLC gateway: a daemon's verdicts over OPC UA and Modbus TCP")
    gw.add_argument("--config", help="line config with a gateway: section (YAML)")
    gw.add_argument("--print-register-map", action="store_true", help="print the Modbus register map (Markdown)")
    gw.set_defaults(func=cmd_gateway)

    camera_cli.add_parser(sub)
    from inspector.archive import review, tune

    review.add_parser(sub)
    tune.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
