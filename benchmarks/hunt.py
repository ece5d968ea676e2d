"""How fast the beyond-clip hunt (aggregator/hunt.py) names a rogue, and how many rounds it costs.

Pure policy, no protocol: each round the hunt's plan leaves suspects out, every other device joins, and
the round's sum is refused when the rogue is in it and attacks (with probability ``--attack``). Per fleet
size, minimum cohort and test share it reports the refused rounds until the naming (the rounds the rogue
spoils; mean and max over ``--trials`` seeds) and the rounds until the naming. The end-to-end count
through the real secure round is ``benchmarks/adversarial.py``'s beyond-clip classes.

    python -m benchmarks.hunt --json benchmarks/results/hunt.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from aggregator.hunt import Hunt

FLEETS = [(9, 4), (20, 5), (100, 10), (1000, 100)]


def trial(n: int, min_cohort: int, share: float, attack: float, seed: int) -> tuple[int, int | None]:
    """(refused rounds, round of the naming or None) for one rogue among ``n`` devices."""
    rng = random.Random(seed)
    fleet = [f"d{i:04d}" for i in range(n)]
    rogue = fleet[rng.randrange(n)]
    hunt = Hunt(rng=random.Random(seed), test_share=share, patience=10**9)
    refused = 0
    for r in range(5000):
        sat_out = hunt.plan(min_cohort)
        cohort = [d for d in fleet if d not in sat_out]
        if rogue in cohort and rng.random() < attack:
            refused += 1
            if hunt.refused(cohort, fleet):
                return refused, r + 1
        else:
            hunt.passed(cohort, fleet)
    return refused, None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--shares", default="0.5,0.25,0.125")
    parser.add_argument("--attacks", default="1.0,0.3", help="the rogue's chance to attack when it joins")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (nowhere else)")
    args = parser.parse_args(argv)
    rows = []
    for n, m in FLEETS:
        for share in map(float, args.shares.split(",")):
            for attack in map(float, args.attacks.split(",")):
                runs = [trial(n, m, share, attack, seed) for seed in range(args.trials)]
                named = [r for _, r in runs if r is not None]
                refused = [f for f, _ in runs]
                row = {"devices": n, "min_cohort": m, "test_share": share, "attack": attack,
                       "refused_mean": statistics.mean(refused), "refused_max": max(refused),
                       "rounds_to_name_mean": statistics.mean(named) if named else None,
                       "unnamed": len(runs) - len(named)}  # fmt: skip
                rows.append(row)
                print(f"n={n:<5} min={m:<4} share={share:<6} attack={attack:<4} refused mean "
                      f"{row['refused_mean']:.2f} max {row['refused_max']}  rounds to name "
                      f"{row['rounds_to_name_mean']}  unnamed {row['unnamed']}", flush=True)  # fmt: skip
    if args.json is not None:
        reproduce = f"python -m benchmarks.hunt --trials {args.trials} --shares {args.shares} " \
                    f"--attacks {args.attacks} --json {args.json}"  # fmt: skip
        args.json.write_text(json.dumps({"reproduce": reproduce, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
