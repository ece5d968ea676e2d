"""Summaries, targets, plots and the printed table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.fleet.sim import FINAL_WINDOW, ROOT, Method, Trace, secagg_overhead
from shared.codec import CodecConfig, UpdateEncoder, packed_size
from simulator.workloads import Workload

# -- report ---------------------------------------------------------------------------------------


def summarise(trace: Trace, target: float) -> dict[str, object]:
    return {
        "method": trace.method,
        "time_to_target_s": trace.time_to(target),
        "final_accuracy": trace.accuracies[-1],
        "final_accuracy_last10": float(np.mean(trace.accuracies[-FINAL_WINDOW:])),
        "best_accuracy": max(trace.accuracies),
        "rounds": trace.rounds,
        "abandoned_rounds": trace.abandoned,
        "contributions": trace.contributions,
        "stale_contributions": trace.stale,
        "discarded_stale": trace.discarded,
        "mean_staleness": float(np.mean(trace.staleness)) if trace.staleness else 0.0,
        "bytes_up_per_device_round": float(np.mean(trace.bytes_up)) if trace.bytes_up else 0.0,
        "block_sets": sorted("all" if b is None else "+".join(b) for b in trace.block_sets),
        "curve": [[round(t, 2), round(a, 4)] for t, a in zip(trace.times, trace.accuracies, strict=True)],
    }


def plot(rows: list[dict], real: dict | None, target: float, directory: Path) -> list[str]:
    """PNG curves of accuracy against time into ``directory`` (beside the JSON: ``fleet.json`` ->
    ``fleet/``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for n in sorted({r["devices"] for r in rows}):
        fractions = sorted({r["stragglers"] for r in rows if r["devices"] == n})
        fig, axes = plt.subplots(1, len(fractions), figsize=(5 * len(fractions), 4), squeeze=False)
        for ax, s in zip(axes[0], fractions, strict=True):
            for r in rows:
                if r["devices"] == n and r["stragglers"] == s:
                    curve = np.array(r["curve"])
                    ax.plot(curve[:, 0], curve[:, 1], label=r["method"])
            ax.axhline(target, color="grey", linestyle=":", linewidth=1)
            ax.set_title(f"{n} devices, {s:.0%} stragglers")
            ax.set_xlabel("virtual time (s)")
            ax.set_ylabel("test accuracy")
            ax.set_ylim(0, 1)
            ax.legend(loc="lower right")
        fig.tight_layout()
        path = directory / f"accuracy_vs_time_{n}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(_shown(path))
    if real:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, m in real["methods"].items():
            curve = np.array(m["curve"]) if m["curve"] else np.zeros((0, 2))
            ax.plot(curve[:, 0], curve[:, 1], marker="o", label=name)
        ax.set_xlabel("wall-clock time (s), real MQTT")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{real['clients']} devices, {real['slow_clients']} slowed by {real['slow_delay_s']} s")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = directory / "real_mqtt.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(_shown(path))
    return written


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def speedup(rows: list[dict], n: int, s: float, method: str = "fedmq") -> float | None:
    def ttt(name: str) -> float | None:
        return next(
            (
                r["time_to_target_s"]
                for r in rows
                if r["devices"] == n and r["stragglers"] == s and r["method"] == name
            ),
            None,
        )

    if not any(r["devices"] == n and r["stragglers"] == s and r["method"] == "fedavg" for r in rows):
        return None  # FedAvg was not run
    base, ours = ttt("fedavg"), ttt(method)
    if ours is None:
        return None
    if base is None:
        return math.inf  # FedAvg never reached the target within the horizon
    return base / ours


def targets(rows: list[dict], memory: dict, bytes_ref: float) -> list[dict]:
    out = []
    for s, need in ((0.5, 2.0), (0.9, 5.0)):
        for n in sorted({r["devices"] for r in rows}):
            if not any(r["stragglers"] == s and r["devices"] == n for r in rows):
                continue
            for name in ("fedmq", "fedmq-full"):
                value = speedup(rows, n, s, name)
                out.append(
                    {
                        "target": f"time to target, {s:.0%} stragglers, {n} devices: "
                        f"{name} >= {need:g}x faster "
                        "than FedAvg" + (" (ablation, no partial training)" if name != "fedmq" else ""),
                        "value": value,
                        "ok": value is not None and value >= need,
                    }
                )
    ratio = memory["fedmq"]["peak"] / memory["fedmq-full"]["peak"]
    out.append(
        {
            "target": "device peak training memory, partial / full training <= 0.2 "
            "(measured, incl. activations)",
            "value": ratio,
            "ok": ratio <= 0.2,
        }
    )
    ablations = [
        (
            r,
            next(
                a
                for a in rows
                if a["method"] == "fedmq-full"
                and a["devices"] == r["devices"]
                and a["stragglers"] == r["stragglers"]
            ),
        )
        for r in rows
        if r["method"] == "fedmq"
        and any(
            a["method"] == "fedmq-full"
            and a["devices"] == r["devices"]
            and a["stragglers"] == r["stragglers"]
            for a in rows
        )
    ]
    key = "final_accuracy_last10"
    gap = max(a[key] - r[key] for r, a in ablations) if ablations else math.nan
    out.append(
        {
            "target": "final accuracy (mean of the last 10 evaluations) with partial training at most "
            "0.02 below full training (worst setting)",
            "value": gap,
            "ok": gap <= 0.02,
        }
    )
    fedmq_bytes_mean = float(
        np.mean([r["bytes_up_per_device_round"] for r in rows if r["method"] == "fedmq"])
    )
    out.append(
        {
            "target": "bytes up per device per round (incl. SecAgg+ keys/shares/reveal) "
            "<= 0.15x float32 FedAvg",
            "value": fedmq_bytes_mean / bytes_ref,
            "ok": fedmq_bytes_mean / bytes_ref <= 0.15,
        }
    )
    payload = float(np.mean([r["masked_payload_bytes"] for r in rows if r["method"] == "fedmq"]))
    out.append(
        {
            "target": "(supplementary) masked update payload alone <= 0.15x float32 FedAvg update",
            "value": payload / bytes_ref,
            "ok": payload / bytes_ref <= 0.15,
        }
    )
    return out


def _mean_payload(row: dict, method: Method, dim: int, workload: Workload) -> float:
    """Mean packed masked-vector bytes over the block sets fedmq trained (header excluded)."""
    model = workload.federated_model()
    sizes = []
    for label in row["block_sets"]:
        blocks = None if label == "all" else label.split("+")
        d = sum(s.stop - s.start for s in model.block_slices(blocks))
        config = CodecConfig(
            method.bits, method.clip_norm, 13, bytes(32), subsample_rate=method.subsample_rate
        )
        sizes.append(packed_size(UpdateEncoder(config, d).encoded_length, method.bits))
    return float(np.mean(sizes))


def _overheads(sizes: set[int]) -> dict[int, dict[str, float]]:
    """The SecAgg+ overhead of every roster size the fedmq rounds used."""
    return {n: secagg_overhead(n) for n in sorted(sizes)}


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def report(console: Console, results: dict) -> None:
    target = results["target_accuracy"]
    table = Table(title=f"Fleet experiment on digits (virtual time; target accuracy {target})")
    for col in (
        "devices",
        "stragglers",
        "method",
        f"time to {target} (s)",
        "final acc",
        "last 10 mean",
        "best acc",
        "rounds",
        "stale",
        "peak train mem",
        "bytes up/dev/round",
    ):
        table.add_column(col, justify="right")
    for r in results["rows"]:
        ttt = r["time_to_target_s"]
        table.add_row(
            str(r["devices"]),
            f"{r['stragglers']:.0%}",
            r["method"],
            "never" if ttt is None else f"{ttt:.0f}",
            f"{r['final_accuracy']:.3f}",
            f"{r['final_accuracy_last10']:.3f}",
            f"{r['best_accuracy']:.3f}",
            str(r["rounds"]),
            str(r["stale_contributions"]),
            f"{r['peak_train_memory_bytes'] / 1024:.1f} KiB",
            f"{r['bytes_up_per_device_round']:,.0f}",
        )
    table.add_row("", "", "central", "", f"{results['central_accuracy']:.3f}", "", "", "", "", "", "")
    console.print(table)
    real = results.get("real_mqtt")
    if real:
        rt = Table(
            title=f"Real MQTT: {real['clients']} devices, {real['slow_clients']} slowed by "
            f"{real['slow_delay_s']} s per training, {real['rounds']} rounds (wall-clock)"
        )
        for col in ("method", f"time to {REAL_TARGET}", "final acc", "wall s", "bytes up/dev/round"):
            rt.add_column(col, justify="right")
        for name, m in real["methods"].items():
            ttt = next((t for t, a in m["curve"] if a >= REAL_TARGET), None)
            rt.add_row(
                name,
                "never" if ttt is None else f"{ttt:.1f}",
                f"{m['final_accuracy']:.3f}",
                f"{m['wall_s']:.1f}",
                f"{m['bytes_up_per_client_round']:,.0f}",
            )
        console.print(rt)
    for check in results["targets"]:
        value = check["value"]
        shown = "n/a" if value is None else ("inf" if math.isinf(value) else f"{value:.3f}")
        console.print(f"{'PASS' if check['ok'] else 'FAIL'}  {check['target']}: {shown}")
    console.print(f"reproduce: {results['reproduce']}   ({results['wall_s']:.0f} s)")


REAL_TARGET = 0.7
