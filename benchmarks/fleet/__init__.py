"""Fleet experiment (issue 5, item 4): semi-asynchronous fedmq against synchronous FedAvg and FedBuff.

One run on ``digits`` (sklearn 8x8 digits, Dirichlet(0.5) label skew, the 6,090-parameter CNN of
:mod:`simulator.workloads.digits`) reports time to a target accuracy, final accuracy, device peak training
memory and bytes per device per round for three methods, at 100 and 500 devices with 0%, 50% and 90%
stragglers (10x slower) and an on/off availability model; then a small run over real MQTT.

What is REAL in the large runs (the components a deployment runs, called directly):

* local training: :class:`edge_client.trainer.LocalTrainer` on each device's shard (torch, SGD);
* partial training: every fedmq device has a memory budget (``--budget-fraction`` of full training's
  measured peak) and announces its activation profile (:func:`edge_client.memory.activation_profile`);
  :func:`aggregator.blocks.choose_blocks` picks each round's blocks, the device plans the step
  (:func:`edge_client.memory.plan_training`: micro-batch, momentum) and trains as
  ``EdgeClient._train_within_budget`` does, sending the announced blocks' slice;
* staleness: :class:`shared.staleness.StalenessPolicy` (weights, max staleness) and the device's rules
  for stale deltas (discarded past the maximum; a stale delta of other blocks waits for a round of its
  blocks; a device still training on an older snapshot skips rounds; a device whose last training took
  longer than the masked window trains ahead without advertising, ``EdgeConfig.train_ahead``);
* the uplink codec: fedmq encodes with :class:`shared.codec.UpdateEncoder` (clip, rotation,
  subsampling, 12-bit stochastic quantization, weight limbs), the aggregator decodes the modular sum with
  :class:`shared.codec.UpdateDecoder`. The SecAgg+ masks cancel in that sum, so the masked sum is
  replaced by the plain modular sum of the encodings (``tests/integration/test_secure.py`` checks they
  are equal bit for bit). FedAvg and FedBuff send float32 (:class:`shared.codec.Float32Codec`);
* the server step: :class:`aggregator.optimizer.ServerOptimizer` (FedAvg, server lr 1), with partial
  training's per-block rotation scales (:func:`aggregator.blocks.rotation_scales`, as the engine applies
  them with ``AggregatorConfig.rotation_step``);
* bytes: real messages encoded by :func:`shared.wire.encode` — ``ModelUpdate`` (float32) for FedAvg
  and FedBuff; for fedmq a real SecAgg+ round (``shared.secagg``, real keys, Shamir shares, sealed boxes)
  at the round's roster size gives ``AdvertiseKeys``, the ``ShareBatch``, ``UnmaskReveal``, and a
  ``MaskedInput`` whose payload is the packed encoding;
* device memory: :func:`edge_client.memory.measure_training_memory` on the real model, batch,
  micro-batch, optimizer and freezing (tensor bytes: weights, gradients, momentum, autograd-saved
  activations).

What is SIMULATED: time (a discrete-event queue over virtual seconds: local training takes
``steps x step_s`` seconds, times 10 for a straggler, with log-normal jitter; messages take a latency plus
bytes over a link rate), availability (intermittent devices alternate exponential on/off periods; they
train while off but can only be selected or upload while on), the MQTT transport (no broker in the large
runs) and admission (the first ``ceil(1.3 K)`` devices to advertise keys are modelled as a random draw
among the online devices able to join; devices that lose the race do not train). Secure-round dropouts
after the masked phase are not modelled.

Methods:

* ``fedavg``: synchronous FedAvg. Each round samples ``K`` online devices, waits for all of them or the
  deadline (long enough for a straggler), averages float32 deltas; nothing stale.
* ``fedbuff``: FedBuff (Nguyen et al., AISTATS 2022): ``concurrency`` devices always training, the
  server applies the buffer when ``K`` updates are in, each weighted ``1/sqrt(1+tau)``; full model,
  float32.
* ``fedmq``: buffered secure rounds: ``ceil(1.3 K)`` admitted, the round closes at ``K`` masked inputs or
  its masked-phase deadline; stale deltas weighted by the age-variance rule (``shared/staleness.py``);
  slow devices train ahead; memory-budgeted rotating partial training with the rotation-scaled server
  step; 12-bit integer codec (clip 1, subsampling 0.25); SecAgg+ bytes counted.
* ``fedmq-full``: fedmq without partial training (the memory/accuracy ablation).

The small real run drives :func:`simulator.fleet.run_fleet` (real Mosquitto, aggregator, one edge client
and MQTT connection per device) with some devices slowed by ``FleetConfig.slow_clients``.

    .venv/bin/python -m benchmarks.fleet --json benchmarks/results/fleet.json
    .venv/bin/python -m benchmarks.fleet --quick --json /tmp/fleet.json
"""
