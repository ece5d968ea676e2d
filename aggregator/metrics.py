"""Prometheus metrics and a health check for a running aggregator (stdlib only: no torch, no client lib).

``GET /metrics`` answers in the Prometheus text format (version 0.0.4); ``GET /healthz`` answers 200 with
``{"status": "ok", ...}`` while the aggregator is connected to its broker and its tasks are alive, 503
otherwise (so a container orchestrator restarts a stuck one). Counters come from hooks the CLI installs
(round results, rejected messages, incoming messages); gauges are read from the engine at scrape time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shared.errors import ConfigError, FedmqError
from shared.supervision import FaultCounter, Rejection
from shared.topics import Topics, check_id
from shared.wire import Presence, RoundResult, decode

log = logging.getLogger(__name__)

#: Round-duration histogram buckets (seconds).
BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))


def reason_class(reason: str) -> str:
    """A bounded label for why a round was abandoned (the reason text itself is unbounded)."""
    text = reason.lower()
    for needle, label in (
        ("min_clients", "too_few_devices"), ("advertised", "too_few_devices"), ("updates", "too_few_devices"),
        ("reveal", "too_few_reveals"), ("threshold", "below_threshold"), ("internal", "internal_error"),
        ("budget", "privacy_budget"), ("stop", "stopped"),
    ):  # fmt: skip
        if needle in text:
            return label
    return "other" if reason else "none"


class ClassifiedFaults(FaultCounter):
    """A :class:`FaultCounter` that also counts by (rule, sender class): enrolled device, unknown id,
    or unparseable topic. Installed as ``aggregator.faults`` before the aggregator starts."""

    def __init__(self, aggregator: Any, keep: int = 1000) -> None:
        super().__init__(keep)
        self._aggregator = aggregator
        self.by_class: Counter[tuple[str, str]] = Counter()

    def sender_class(self, sender: str) -> str:
        if sender.startswith("fl/"):
            return "unparsed"
        try:
            check_id(sender, "sender")
        except ConfigError:
            return "unparsed"
        return "enrolled" if self._aggregator.config.allows(sender) else "unknown"

    def record(self, sender: str, topic: str, rule: str, detail: str) -> Rejection:
        self.by_class[(rule, self.sender_class(sender))] += 1
        return super().record(sender, topic, rule, detail)


def _esc(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class Metrics:
    """Collects round outcomes; renders the exposition from them and from the live aggregator."""

    def __init__(self, aggregator: Any) -> None:
        self.aggregator = aggregator
        self.started = time.time()
        self.rounds: Counter[tuple[str, str]] = Counter()
        self.durations: list[int] = [0] * len(BUCKETS)
        self.duration_sum = 0.0
        self.duration_count = 0
        self.dropouts = 0
        self.last_contributors = 0
        self.last_round_at: float | None = None
        self.online: dict[str, bool] = {}
        self.faults = ClassifiedFaults(aggregator)
        self._status_prefix = Topics(aggregator.config.federation).status_all[:-1]
        aggregator.faults = self.faults

    # -- hooks -----------------------------------------------------------------------------------

    def on_round(self, result: RoundResult, weights: np.ndarray) -> None:
        label = reason_class(result.reason) if result.status != "closed" else "none"
        self.rounds[(result.status, label)] += 1
        self.last_contributors = result.contributors
        now = time.time()
        self.last_round_at = now
        store = getattr(self.aggregator, "store", None)
        record = store.last_round() if store is not None else None
        if record is not None and record.round_id == result.round_id:
            seconds = max(0.0, now - record.opened_at)
            self.duration_sum += seconds
            self.duration_count += 1
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.durations[i] += 1
        secure = getattr(self.aggregator, "last_secure", None)
        server = getattr(secure, "server", None) if secure is not None else None
        if server is not None and getattr(secure, "round_id", None) == result.round_id:
            roster = getattr(server, "roster", None)
            if roster is not None:
                self.dropouts += max(0, len(roster.members) - len(server.masked))

    def on_message(self, topic: str, payload: bytes) -> None:
        """Intake hook: track retained presence (who is online)."""
        if not payload or not topic.startswith(self._status_prefix):
            return
        with contextlib.suppress(FedmqError):
            presence = decode(payload, Presence)
            if presence.client_id == topic[len(self._status_prefix) :]:
                self.online[presence.client_id] = presence.online

    # -- exposition ------------------------------------------------------------------------------

    def phase_counts(self) -> dict[str, int]:
        secure = getattr(self.aggregator, "_secure", None)
        counts = {"keys": 0, "shares": 0, "masked": 0, "unmask": 0}
        if secure is None:
            return counts
        counts["keys"] = len(getattr(secure, "adverts", {}) or {})
        server = getattr(secure, "server", None)
        if server is not None:
            counts["shares"] = server.received("share")
            counts["masked"] = server.received("mask")
            counts["unmask"] = server.received("unmask")
        return counts

    def render(self) -> str:
        agg = self.aggregator
        out: list[str] = []

        Samples = Sequence[tuple[Mapping[str, object], object]]

        def metric(name: str, kind: str, doc: str, samples: Samples) -> None:
            out.append(f"# HELP {name} {doc}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                text = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
                out.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

        rounds = [({"status": s, "reason": r}, n) for (s, r), n in sorted(self.rounds.items())]
        for status in ("closed", "abandoned"):
            if not any(labels["status"] == status for labels, _ in rounds):
                rounds.append(({"status": status, "reason": "none"}, 0))
        metric("fedmq_rounds_total", "counter", "Rounds ended, by status and reason class.", rounds)
        metric("fedmq_model_version", "gauge", "Version of the published global model.",
               [({}, getattr(agg, "version", -1))])  # fmt: skip
        metric("fedmq_round_contributors", "gauge", "Devices summed into the last round.",
               [({}, self.last_contributors)])  # fmt: skip
        cumulative = [
            ({"le": "+Inf" if b == float("inf") else b}, n) for b, n in zip(BUCKETS, self.durations)
        ]
        out.append("# HELP fedmq_round_duration_seconds Wall time from a round's opening to its end.")
        out.append("# TYPE fedmq_round_duration_seconds histogram")
        for labels, n in cumulative:
            out.append(f'fedmq_round_duration_seconds_bucket{{le="{labels["le"]}"}} {n}')
        out.append(f"fedmq_round_duration_seconds_sum {self.duration_sum:.3f}")
        out.append(f"fedmq_round_duration_seconds_count {self.duration_count}")
        metric("fedmq_round_phase_devices", "gauge", "Devices heard from in each phase of the open round.",
               [({"phase": p}, n) for p, n in self.phase_counts().items()])  # fmt: skip
        metric("fedmq_dropouts_total", "counter", "Roster members whose masked input never came.",
               [({}, self.dropouts)])  # fmt: skip
        directory = getattr(agg.config, "directory", None)
        metric("fedmq_devices_enrolled", "gauge", "Devices in the aggregator's enrolled set.",
               [({}, len(directory) if directory is not None else 0)])  # fmt: skip
        metric("fedmq_devices_online", "gauge", "Enrolled devices whose retained presence says online.",
               [({}, sum(1 for d, up in self.online.items() if up and agg.config.allows(d)))])  # fmt: skip
        stats = getattr(getattr(agg, "_conn", None), "stats", None)
        metric("fedmq_bytes_received_total", "counter", "MQTT payload bytes the aggregator received.",
               [({}, getattr(stats, "bytes_in", 0))])  # fmt: skip
        metric("fedmq_bytes_sent_total", "counter", "MQTT payload bytes the aggregator published.",
               [({}, getattr(stats, "bytes_out", 0))])  # fmt: skip
        accountant = getattr(agg, "accountant", None)
        epsilon = accountant.epsilon() if accountant is not None else 0.0
        metric("fedmq_privacy_epsilon", "gauge", "Differential-privacy epsilon spent so far (0: DP off).",
               [({}, epsilon if np.isfinite(epsilon) else "+Inf")])  # fmt: skip
        rejected = [({"rule": r, "sender": c}, n) for (r, c), n in sorted(self.faults.by_class.items())]
        metric("fedmq_rejected_messages_total", "counter", "Refused messages by rule and sender class.",
               rejected)  # fmt: skip
        named: Counter[str] = Counter()  # by rule only (bounded); per sender: Aggregator.offences
        for (_, rule), n in getattr(getattr(agg, "offences", None), "counts", {}).items():
            named[rule] += n
        metric("fedmq_offences_total", "counter", "Misbehaviour named and counted, by rule.",
               [({"rule": r}, n) for r, n in sorted(named.items())])  # fmt: skip
        quarantine = getattr(getattr(agg, "offences", None), "quarantine", None)
        if quarantine is not None:
            metric("fedmq_devices_quarantined", "gauge", "Devices sitting out rounds (shared.quarantine).",
                   [({}, len(quarantine.blocked()))])  # fmt: skip
        metric("fedmq_broker_connected", "gauge", "1 while connected to the broker.",
               [({}, int(self.connected()))])  # fmt: skip
        metric("fedmq_start_time_seconds", "gauge", "Unix time the aggregator started.", [({}, self.started)])
        return "\n".join(out) + "\n"

    def connected(self) -> bool:
        conn = getattr(self.aggregator, "_conn", None)
        return bool(conn is not None and conn.connected)

    def health(self) -> tuple[int, dict[str, object]]:
        supervisor = getattr(self.aggregator, "supervisor", None)
        failed = getattr(supervisor, "error", None) if supervisor is not None else None
        ok = self.connected() and failed is None
        body = {
            "status": "ok" if ok else "unhealthy",
            "broker_connected": self.connected(),
            "model_version": getattr(self.aggregator, "version", -1),
            "last_round_at": self.last_round_at,
        }
        if failed is not None:
            body["error"] = str(failed)
        return (200 if ok else 503), body


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``:9464`` = every interface) for the metrics endpoint."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError("metrics.listen", f"{text!r} is not host:port") from None
    if not 0 <= number < 65536:
        raise ConfigError("metrics.listen", f"{number} is not a TCP port")
    return (host or "0.0.0.0"), number


class MetricsServer:
    """A tiny HTTP/1.1 server for ``/metrics`` and ``/healthz`` on the event loop."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> MetricsServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics (health: /healthz)", self.host, self.port)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            parts = line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass
            if path == "/metrics":
                status, body, kind = 200, self.metrics.render(), "text/plain; version=0.0.4"
            elif path == "/healthz":
                status, doc = self.metrics.health()
                body, kind = json.dumps(doc), "application/json"
            else:
                status, body, kind = 404, "not found\n", "text/plain"
            data = body.encode()
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(data)}\r\n"
                f"Connection: close\r\n\r\n".encode() + data
            )
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        except Exception:  # one bad scrape never ends the server
            log.exception("metrics request failed")
        finally:
            writer.close()


async def serve_metrics(aggregator: Any, listen: str) -> MetricsServer:
    """Install :class:`Metrics` on a (running or about to run) aggregator and serve it on ``listen``;
    ``await server.close()`` when done. Used by ``fedmq-demo --metrics`` and embedding applications."""
    metrics = Metrics(aggregator)
    aggregator.observers.append(metrics.on_round)
    aggregator.intake_hooks.append(metrics.on_message)
    host, port = parse_listen(listen)
    return await MetricsServer(metrics, host, port).start()
