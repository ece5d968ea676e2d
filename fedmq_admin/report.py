"""``fedmq report``: one self-contained HTML page per federation: accuracy, participation and bytes by round.

Why HTML with inline SVG: it opens anywhere, mails as one file, and needs neither matplotlib nor torch on
the admin machine. Accuracy needs the operator's evaluation hook (``--eval mynet.py:evaluate``, a
function taking ``{tensor name: numpy array}`` and returning a number, e.g. accuracy on a held-out set),
applied to every snapshot the store still keeps (``retention.keep_snapshots``); participation and bytes
come from the aggregator's ``participation.json``.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.store import Store
from fedmq_admin.status import participation
from shared.errors import FedmqError
from shared.layout import ModelLayout
from shared.snapshots import snapshot_weights
from shared.wire import ModelSnapshot, decode

Evaluate = Callable[[dict[str, np.ndarray]], float]


def evaluate_snapshots(store_dir: Path, evaluate: Evaluate) -> list[tuple[int, int, float]]:
    """(version, round, score) of every snapshot the store keeps."""
    store = Store(Path(store_dir))
    try:
        out = []
        for version in store.versions():
            stored = Store.read_snapshot(store.snapshot_dir / f"model-v{version:08d}.fedmq")
            snapshot = decode(stored.snapshot, ModelSnapshot)
            tensors = ModelLayout.from_wire(snapshot.layout).split(snapshot_weights(snapshot))
            out.append((version, snapshot.round_id, float(evaluate(tensors))))
        return out
    finally:
        store.close()


def _svg_series(
    title: str, points: Sequence[tuple[float, float]], *, bars: bool = False, unit: str = ""
) -> str:
    """A small inline SVG chart of (x, y) points."""
    width, height, pad = 640, 180, 36
    if not points:
        return f"<h3>{html.escape(title)}</h3><p>no data yet</p>"
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y1 = max(ys) if max(ys) > 0 else 1.0

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad - y / y1 * (height - 2 * pad)

    if bars:
        w = max(1.0, (width - 2 * pad) / max(1, len(points)) * 0.8)
        body = "".join(
            f'<rect x="{sx(x) - w / 2:.1f}" y="{sy(y):.1f}" width="{w:.1f}" '
            f'height="{height - pad - sy(y):.1f}"'
            f' fill="#4a7ebb"><title>{x:g}: {y:g}{unit}</title></rect>'
            for x, y in points
        )
    else:
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points))
        body = f'<path d="{path}" fill="none" stroke="#c0504d" stroke-width="2"/>' + "".join(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="#c0504d">'
            f"<title>{x:g}: {y:.4g}</title></circle>"
            for x, y in points
        )
    axes = (f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>'
            f'<text x="{pad}" y="{height - 8}" font-size="11">round {x0:g}</text>'
            f'<text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">round {x1:g}</text>'
            f'<text x="4" y="{pad - 8}" font-size="11">{y1:.4g}{html.escape(unit)}</text>')  # fmt: skip
    return (f"<h3>{html.escape(title)}</h3><svg xmlns='http://www.w3.org/2000/svg' width='{width}' "
            f"height='{height}'>{axes}{body}</svg>")  # fmt: skip


def render(federation: str, ledger: dict[str, Any], scores: list[tuple[int, int, float]]) -> str:
    rounds = sorted(((int(r), row) for r, row in ledger.get("rounds", {}).items()), key=lambda item: item[0])
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>fedmq {html.escape(federation)}</title>",
        "<body style='font-family: sans-serif; max-width: 720px; margin: auto'>",
        f"<h1>Federation {html.escape(federation)}</h1>",
        f"<p>Model v{ledger.get('version')}; made {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.</p>",
        _svg_series("Evaluation score by round (your --eval hook)", [(r, s) for _, r, s in scores]),
        _svg_series("Devices summed per round", [(r, len(row.get("contributors", []))) for r, row in rounds],
                    bars=True),
        _svg_series("Bytes received per round", [(r, row.get("bytes_in", 0)) for r, row in rounds],
                    bars=True, unit=" B"),
        "<h3>Devices</h3><table border='1' cellpadding='4' style='border-collapse: collapse'>"
        "<tr><th>device</th><th>rounds</th><th>last round</th><th>bytes in</th></tr>",
    ]
    for device, row in sorted(ledger.get("devices", {}).items()):
        parts.append(f"<tr><td>{html.escape(device)}</td><td>{row.get('rounds', 0)}</td>"
                     f"<td>{row.get('last_round')}</td><td>{row.get('bytes_in', 0):,}</td></tr>")  # fmt: skip
    parts.append("</table>")
    abandoned = [(r, row) for r, row in rounds if row.get("status") != "closed"]
    if abandoned:
        parts.append("<h3>Abandoned rounds</h3><ul>")
        parts += [f"<li>round {r}: {html.escape(str(row.get('reason', '')))}</li>"
                  for r, row in abandoned[-20:]]  # fmt: skip
        parts.append("</ul>")
    parts.append(f"<script type='application/json' id='data'>{html.escape(json.dumps({'scores': scores}))}"
                 "</script></body>")  # fmt: skip
    return "\n".join(parts)


def write_report(store_dir: Path, federation: str, out: Path, evaluate: Evaluate | None = None) -> Path:
    if not (Path(store_dir) / "journal.sqlite3").exists():
        raise FedmqError(f"{store_dir} is not an aggregator store")
    scores = evaluate_snapshots(store_dir, evaluate) if evaluate is not None else []
    Path(out).write_text(render(federation, participation(store_dir), scores))
    return Path(out)
