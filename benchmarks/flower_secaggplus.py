"""Flower 1.42 SecAgg+ driven offline, for the fedmq comparison in ``benchmarks/secagg.py``.

Runs in an interpreter that has ``flwr`` installed (never fedmq's venv) and prints one JSON object on
stdout. Nothing here imports fedmq; the script is self-contained so it can run in any venv with flwr.

What runs is Flower's own code, end to end, without a Flower deployment:

* server: ``flwr.server.workflow.SecAggPlusWorkflow`` (all four stages: ``setup_stage``,
  ``share_keys_stage``, ``collect_masked_vectors_stage``, ``unmask_stage``) with a real ``FedAvg``
  strategy, ``SimpleClientManager`` and ``LegacyContext``;
* devices: ``flwr.client.mod.secaggplus_mod`` (the mod every Flower SecAgg+ client wraps around its
  ``ClientApp``), one ``Context`` per node, around a trivial train function returning a fixed float
  vector of ``d`` parameters and ``num_examples = 10``;
* transport: :class:`InProcessGrid`, a ``flwr.serverapp.Grid`` that hands each message to the node's
  mod after a protobuf round trip (``flwr.common.serde.recorddict_to_proto`` /
  ``recorddict_from_proto``), as the SuperLink would, so nodes never share objects with the server and
  the wire sizes are Flower's real protobuf sizes (``ByteSize()`` of the ``RecordDict`` proto; the gRPC
  and ``Message`` metadata envelope, a few hundred bytes, is not counted).

Dropout "after the share phase": the nodes chosen to drop answer the ``collect_masked_vectors``
request with an error reply (they hold their neighbours' shares but never upload), exactly what
Flower's workflow sees when a node dies at that point. Their pair masks must then be rebuilt.

Timed server unmask (``server_unmask_s``): from the moment the stage-3 replies (key shares) are in the
workflow's hands (``Grid.send_and_receive`` returns inside ``unmask_stage``) to the moment
``unmask_stage`` calls ``strategy.aggregate_fit``. That window is Flower's whole reconstruction path:
building the share lists, ``flwr.common.secure_aggregation.crypto.shamir.combine_shares`` (PyCryptodome
Shamir) for every node, ``generate_shared_key`` (ECDH + HKDF) per (dropped, neighbour) pair,
``secaggplus_utils.pseudo_rand_gen`` (numpy ``RandomState`` seeded with 32 bits) per mask,
``parameters_subtraction``/``parameters_addition``/``parameters_mod`` and the final ``dequantize``.
The same functions are wrapped (in the workflow module's namespace only, so device-side calls are
not counted) to split that time into ``shamir_s``, ``key_agreement_s`` and ``prg_s``. FedAvg's own
averaging after the hand-off is outside the window.

    /tmp/flwr-venv/bin/python benchmarks/flower_secaggplus.py --devices 100 --length 1000000 \
        --neighbours 52 --threshold 32 --dropout 0.1
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def _need_flwr() -> Any:
    try:
        import flwr
    except ImportError as exc:  # reported as JSON so the caller can say precisely why
        print(json.dumps({"ok": False, "error": f"flwr does not import: {exc}"}))
        sys.exit(0)
    return flwr


flwr = _need_flwr()

import flwr.server.workflow.secure_aggregation.secaggplus_workflow as workflow_module  # noqa: E402
from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.app.error import Error  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.common import (  # noqa: E402
    Code,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import (  # noqa: E402
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto  # noqa: E402
from flwr.compat.common import recorddict_compat as compat  # noqa: E402
from flwr.server import ServerConfig  # noqa: E402
from flwr.server.client_manager import SimpleClientManager  # noqa: E402
from flwr.server.compat.grid_client_proxy import GridClientProxy  # noqa: E402
from flwr.server.compat.legacy_context import LegacyContext  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.server.workflow import SecAggPlusWorkflow  # noqa: E402
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD  # noqa: E402
from flwr.server.workflow.constant import Key as WorkflowKey  # noqa: E402
from flwr.serverapp.grid import Grid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

NUM_EXAMPLES = 10
SERVER_NODE_ID = 0


def _copy(content: RecordDict) -> tuple[RecordDict, int]:
    """Protobuf round trip (what the SuperLink does) and the encoded size in bytes."""
    proto = recorddict_to_proto(content)
    return recorddict_from_proto(proto), proto.ByteSize()


class InProcessGrid(Grid):
    """A Grid whose 'nodes' are Flower SecAgg+ client mods in this process (see module docstring)."""

    def __init__(self, node_ids: list[int], updates: dict[int, np.ndarray], dropped: set[int]) -> None:
        self.node_ids = node_ids
        self.updates = updates
        self.dropped = dropped
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={})
            for nid in node_ids
        }
        self.reply_bytes: dict[str, list[int]] = {}
        self.request_bytes: dict[str, list[int]] = {}
        self.device_s: dict[str, list[float]] = {}
        self.stage_returned_at: dict[str, float] = {}
        self._run: Any = None

    # -- Grid's abstract surface (only send_and_receive is used by the workflow) -----------------
    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("use send_and_receive")

    def _train(self, msg: Message, ctxt: Context) -> Message:
        """The ClientApp the mod wraps: returns this node's fixed update."""
        fitres = FitRes(
            status=Status(code=Code.OK, message=""),
            parameters=ndarrays_to_parameters([self.updates[ctxt.node_id]]),
            num_examples=NUM_EXAMPLES,
            metrics={},
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        stage = ""
        for msg in messages:
            content, size = _copy(msg.content)
            stage = str(content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
            self.request_bytes.setdefault(stage, []).append(size)
            nid = msg.metadata.dst_node_id
            if nid in self.dropped and stage in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK):
                replies.append(Message(Error(code=0, reason="node dropped out"), reply_to=msg))
                continue
            delivered = Message(
                content=content,
                dst_node_id=nid,
                message_type=msg.metadata.message_type,
                group_id=msg.metadata.group_id,
            )
            start = time.perf_counter()
            reply = secaggplus_mod(delivered, self.contexts[nid], self._train)
            self.device_s.setdefault(stage, []).append(time.perf_counter() - start)
            reply_content, reply_size = _copy(reply.content)
            self.reply_bytes.setdefault(stage, []).append(reply_size)
            replies.append(Message(reply_content, reply_to=msg))
        self.stage_returned_at[stage] = time.perf_counter()
        return replies


class _Timed:
    """Wrap a Flower function in the workflow module's namespace and sum its wall time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.inner: Callable[..., Any] = getattr(workflow_module, name)
        self.seconds = 0.0
        self.calls = 0
        setattr(workflow_module, name, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1

    def restore(self) -> None:
        setattr(workflow_module, self.name, self.inner)


def run_round(n: int, length: int, neighbours: int, threshold: int, dropout: float, seed: int) -> dict:
    # What a ServerApp process gets from its runtime: Flower's Message() reads the sender from here.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SERVER_NODE_ID, 1
    rng = random.Random(seed)
    random.seed(seed)  # the workflow shuffles node ids with the global `random`
    np.random.seed(seed)  # Flower's stochastic rounding uses the global numpy RNG
    node_ids = sorted(rng.sample(range(1, 2**63), n))
    dropped = set(rng.sample(node_ids, round(dropout * n)))
    data_rng = np.random.default_rng(seed)
    updates = {nid: (data_rng.standard_normal(length) * 0.1).astype(np.float32) for nid in node_ids}
    survivors = [nid for nid in node_ids if nid not in dropped]
    expected_mean = np.mean([updates[nid] for nid in survivors], axis=0, dtype=np.float64)

    grid = InProcessGrid(node_ids, updates, dropped)
    manager = SimpleClientManager()
    for nid in node_ids:
        manager.register(GridClientProxy(nid, grid, run_id=1))
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n)
    handed_off: dict[str, Any] = {}
    inner_aggregate = strategy.aggregate_fit

    def aggregate_fit(server_round, results, failures):  # type: ignore[no-untyped-def]
        handed_off["at"] = time.perf_counter()
        handed_off["parameters"] = results[0][1].parameters if results else None
        handed_off["results"] = len(results)
        return inner_aggregate(server_round, results, failures)

    strategy.aggregate_fit = aggregate_fit  # type: ignore[method-assign]
    base = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(
        base, config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=manager
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([np.zeros(length, dtype=np.float32)]), True
    )
    # num_shares counts the node itself: a ring of `neighbours` neighbours is num_shares = neighbours + 1.
    secaggplus = SecAggPlusWorkflow(num_shares=neighbours + 1, reconstruction_threshold=threshold)
    timers = {name: _Timed(name) for name in ("combine_shares", "generate_shared_key", "pseudo_rand_gen")}
    started = time.perf_counter()
    try:
        secaggplus(grid, context)
    finally:
        for timer in timers.values():
            timer.restore()
    total_s = time.perf_counter() - started
    if "at" not in handed_off or handed_off["parameters"] is None:
        return {"ok": False, "error": "Flower's SecAgg+ workflow halted before aggregation (see its log)"}
    aggregate = parameters_to_ndarrays(handed_off["parameters"])[0]
    max_error = float(np.max(np.abs(aggregate - expected_mean)))

    def stats(values: list[float] | list[int]) -> dict[str, float]:
        return {"mean": float(np.mean(values)), "max": float(np.max(values)), "count": len(values)}

    return {
        "ok": True,
        "n": n,
        "d": length,
        "neighbours": neighbours,
        "num_shares": neighbours + 1,
        "threshold": threshold,
        "dropped": len(dropped),
        "survivors_aggregated": handed_off["results"],
        "server_unmask_s": handed_off["at"] - grid.stage_returned_at[Stage.UNMASK],
        "server_unmask_breakdown_s": {
            "shamir_s": timers["combine_shares"].seconds,
            "key_agreement_s": timers["generate_shared_key"].seconds,
            "prg_s": timers["pseudo_rand_gen"].seconds,
            "prg_calls": timers["pseudo_rand_gen"].calls,
            "shamir_calls": timers["combine_shares"].calls,
        },
        "round_total_s": total_s,
        "aggregate_max_abs_error_vs_plain_mean": max_error,
        "device_s": {stage: stats(v) for stage, v in grid.device_s.items()},
        "upload_bytes_per_device": {stage: stats(v) for stage, v in grid.reply_bytes.items()},
        "download_bytes_per_device": {stage: stats(v) for stage, v in grid.request_bytes.items()},
        "masked_upload_bytes_per_parameter": float(np.mean(grid.reply_bytes[Stage.COLLECT_MASKED_VECTORS]))
        / length,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--length", type=int, default=1_000_000)
    parser.add_argument("--neighbours", type=int, required=True, help="k: neighbours per node (even)")
    parser.add_argument("--threshold", type=int, required=True)
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.1])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rounds = {
        f"{round(100 * p)}%": run_round(
            args.devices, args.length, args.neighbours, args.threshold, p, args.seed
        )
        for p in args.dropout
    }
    print(
        json.dumps(
            {
                "ok": all(r["ok"] for r in rounds.values()),
                "flwr_version": flwr.__version__,
                "python": platform.python_version(),
                "rounds": rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
