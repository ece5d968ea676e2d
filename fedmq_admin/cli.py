"""``fedmq``: the operator's tool. ``fedmq <command> --help`` for each command.

    fedmq init    --dir fed --federation my-fed --host broker.example [--model mypkg.net:build]
    fedmq enroll  --dir fed dev-1 dev-2 ...        one provisioning bundle per device (fed/devices/<id>/)
    fedmq revoke  --dir fed dev-2                  new signed enrolled set; the account is removed
    fedmq status  --dir fed [--json]               rounds, per-device participation and bytes, who is online
    fedmq export  --dir fed --out model.safetensors
    fedmq report  --dir fed --out report.html [--eval mynet.py:evaluate]
    fedmq render-broker --dir fed [--root /mosquitto/config]
    fedmq quarantine --dir fed [--lift dev-2]      who sits out rounds, until when; lift one early

Exit codes: 0 done, 2 a fedmq error (one line on stderr), 3 bad settings, 1 a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fedmq_admin.federation import Federation, init_federation
from shared.errors import FedmqError
from shared.service import EXIT_OK, exit_code, mqtt_config
from shared.settings import load_toml

log = logging.getLogger("fedmq")


def _dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", type=Path, default=Path("."), help="the federation's admin folder (default: .)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedmq", description="fedmq admin: enrol, revoke, watch, export")
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a federation: keys, CA, broker config, aggregator config")
    _dir(p)
    p.add_argument("--federation", required=True, help="federation id ([A-Za-z0-9_-])")
    p.add_argument("--host", default="localhost", help="broker host name devices connect to")
    p.add_argument("--port", type=int, default=None, help="broker port (default 8883 with TLS, 1883 without)")
    p.add_argument("--bind", default=None, help="address the broker listens on (default: every interface)")
    p.add_argument("--san", action="append", default=[], help="more names/addresses for the server cert")
    p.add_argument("--no-tls", dest="tls", action="store_false", help="plain MQTT (development only)")
    p.add_argument("--client-certs", action="store_true", help="mTLS: accounts are client certificates")
    p.add_argument("--model", default=None, help="module:factory or file.py:factory: write the initial "
                   "snapshot from this nn.Module (needs torch)")  # fmt: skip
    p.add_argument("--snapshot-encoding", default="f32", choices=("f32", "f16"), help="initial snapshot")
    p.add_argument("--summing-workers", type=int, default=0,
                   help="aggregator processes summing masked inputs: their accounts and ACL")  # fmt: skip

    p = sub.add_parser("enroll", help="enrol devices; writes devices/<id>/ bundles")
    _dir(p)
    p.add_argument("devices", nargs="+", help="device ids")
    p.add_argument("--public-key", default=None, help="hex Ed25519 key the device made itself (one device)")

    p = sub.add_parser("revoke", help="revoke devices: signed enrolled set without them, accounts removed")
    _dir(p)
    p.add_argument("devices", nargs="+")

    p = sub.add_parser("status", help="round history, per-device participation and bytes, who is online")
    _dir(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--offline", action="store_true", help="do not ask the broker who is online")

    p = sub.add_parser("export", help="write the current global model as safetensors (or .npz)")
    _dir(p)
    p.add_argument("--store", type=Path, default=None, help="aggregator store (DIR/aggregator/store)")
    p.add_argument("--out", type=Path, required=True, help="output file (.safetensors or .npz)")

    p = sub.add_parser("report", help="an HTML page: score (your --eval hook), participation, bytes by round")
    _dir(p)
    p.add_argument("--store", type=Path, default=None, help="aggregator store (DIR/aggregator/store)")
    p.add_argument("--out", type=Path, default=Path("report.html"))
    p.add_argument("--eval", default=None, help="module:function or file.py:function({name: array}) -> score")

    p = sub.add_parser("quarantine", help="devices sitting out rounds for a broken rule; --lift one early")
    _dir(p)
    p.add_argument("--store", type=Path, default=None, help="aggregator store (DIR/aggregator/store)")
    p.add_argument("--lift", action="append", default=[], metavar="DEVICE",
                   help="let this device join again from the aggregator's next round (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("summing-workers", help="set the aggregator's summing workers: accounts, ACL, config")
    _dir(p)
    p.add_argument("count", type=int, help="worker processes (0: sum in the aggregator's own process)")

    p = sub.add_parser("render-broker", help="re-render broker/mosquitto.conf (e.g. for a container)")
    _dir(p)
    p.add_argument("--root", type=Path, default=None, help="where the broker sees broker/ (container path)")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--bind", default=None)
    return parser.parse_args(argv)


def _initial_snapshot(spec: str, federation: str, encoding: str, out: Path) -> Path:
    """Write the initial snapshot of the model ``spec`` names (imports torch, lazily)."""
    from edge_client.model import FederatedModel
    from edge_client.modelspec import load_factory
    from shared.snapshots import make_snapshot, write_initial

    model = FederatedModel(load_factory(spec, field="model")())
    write_initial(out, make_snapshot(federation, 0, -1, model.layout, model.get_flat(), encoding=encoding))
    return out


def cmd_init(args: argparse.Namespace) -> None:
    initial = None
    if args.model:
        args.dir.mkdir(parents=True, exist_ok=True)
        initial = _initial_snapshot(args.model, args.federation, args.snapshot_encoding,
                                    args.dir / "initial.fedmq")  # fmt: skip
    fed = init_federation(
        args.dir, args.federation, host=args.host, port=args.port, bind=args.bind, tls=args.tls,
        client_certs=args.client_certs, extra_names=args.san, initial=initial,
        summing_workers=args.summing_workers,
    )  # fmt: skip
    print(f"federation {args.federation} in {args.dir}")
    print(f"  aggregator key  {fed.aggregator_public.hex()}")
    print(f"  authority key   {fed.authority_public.hex()}  (authority.key: keep it offline)")
    print(f"  broker          mosquitto -c {fed.broker_dir / 'mosquitto.conf'}   ({fed.url})")
    print(f"  aggregator      fedmq-aggregator --config {args.dir / 'aggregator' / 'aggregator.toml'}")
    print(f"  next            fedmq enroll --dir {args.dir} <device id>...")


def cmd_enroll(args: argparse.Namespace) -> None:
    fed = Federation(args.dir)
    if args.public_key and len(args.devices) != 1:
        raise FedmqError("--public-key enrols exactly one device")
    key = bytes.fromhex(args.public_key) if args.public_key else None
    for device in args.devices:
        bundle = fed.enroll(device, public_key=key)
        print(f"{device}: {bundle}  (fedmq-edge --config {bundle / 'device.toml'})")
    print(f"enrolment serial {fed.state.serial}; a running aggregator publishes it within seconds. "
          "Reload the broker for new accounts: kill -HUP <mosquitto pid>")  # fmt: skip


def cmd_revoke(args: argparse.Namespace) -> None:
    fed = Federation(args.dir)
    for device in args.devices:
        msg = fed.revoke(device)
        print(f"{device}: revoked (enrolment serial {msg.serial}, {len(msg.devices)} devices left)")
    print("reload the broker to drop the accounts: kill -HUP <mosquitto pid>")


def _aggregator_settings(fed: Federation) -> dict:
    from aggregator.cli import OPTIONS
    from shared.settings import coerce

    path = fed.root / "aggregator" / "aggregator.toml"
    raw = load_toml(path)
    values = {o.key: coerce(o, raw[o.key], base=path.parent) if o.key in raw else o.default for o in OPTIONS}
    return values


def cmd_status(args: argparse.Namespace) -> None:
    from fedmq_admin.status import collect, render, status_client_id

    fed = Federation(args.dir)
    values = _aggregator_settings(fed)
    store = values["aggregator.store"] or fed.root / "aggregator" / "store"
    mqtt = None if args.offline else mqtt_config(values, status_client_id(), connect_timeout_s=10.0)
    enrolled = sorted(fed.enrolled().directory())
    report = collect(Path(store), mqtt, fed.state.federation, enrolled)
    report["enrolment_serial"] = fed.state.serial
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
    else:
        print(render(report))


def cmd_export(args: argparse.Namespace) -> None:
    from fedmq_admin.export import export

    store = args.store or args.dir / "aggregator" / "store"
    snapshot = export(store, args.out)
    print(f"model v{snapshot.version} (round {snapshot.round_id}) of {snapshot.federation} -> {args.out}")


def cmd_report(args: argparse.Namespace) -> None:
    from edge_client.modelspec import load_factory
    from fedmq_admin.report import write_report

    fed = Federation(args.dir)
    evaluate = load_factory(args.eval, field="eval") if args.eval else None
    store = args.store or args.dir / "aggregator" / "store"
    print(write_report(store, fed.state.federation, args.out, evaluate))


def cmd_quarantine(args: argparse.Namespace) -> None:
    from fedmq_admin.sanctions import lift, render

    store = args.store or args.dir / "aggregator" / "store"
    for device in args.lift:
        print(lift(Path(store), device))
    print(render(Path(store), as_json=args.json))


def cmd_render_broker(args: argparse.Namespace) -> None:
    fed = Federation(args.dir)
    path = fed.render_broker(root=args.root, port=args.port, bind=args.bind)
    print(path)


def cmd_summing_workers(args: argparse.Namespace) -> None:
    fed = Federation(args.dir)
    fed.set_summing_workers(args.count)
    print(f"summing_workers = {args.count}: accounts and ACL written; reload the broker (SIGHUP) and "
          "restart the aggregator")  # fmt: skip


COMMANDS = {
    "init": cmd_init,
    "enroll": cmd_enroll,
    "revoke": cmd_revoke,
    "status": cmd_status,
    "export": cmd_export,
    "report": cmd_report,
    "render-broker": cmd_render_broker,
    "quarantine": cmd_quarantine,
    "summing-workers": cmd_summing_workers,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        COMMANDS[args.command](args)
    except Exception as exc:
        code = exit_code(exc)
        if code == 1:
            log.error("unexpected error", exc_info=exc)
        print(f"fedmq {args.command}: {exc}", file=sys.stderr)
        return code
    return EXIT_OK

if __name__ == "__main__":
    sys.exit(main())
