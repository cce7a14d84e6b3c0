"""Throughput of the compiled batched MCTS (`cython_mcts.run_mcts`) with a free fake model.

Simulations per second = B * num_simulations / wall time of one `run_mcts` call, for B roots,
4 actions, 50 simulations (EfficientZero's Atari setting). The fake model returns precomputed
arrays indexed by simulation, so the time is the search's own: selection, expansion, backup and
the per-simulation Python glue. "outside fn" is the share of the wall time not spent inside
`recurrent_fn` (the fake model's own cost is measured by calling it in a bare loop).

`--flat` replaces the random outputs by a flat model (equal logits, zero values and rewards, equal
root logits, no noise): every selection step is then a tie, drawn from the search's seeded tie
generator, which measures the tie-breaking path at its most expensive.

Usage: python benchmarks/bench_mcts.py [--repeats 15] [--batches 1 16 64 256] [--flat]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from cython_mcts import MCTSConfig, run_mcts


def make_model(batch: int, num_actions: int, num_simulations: int, seed: int = 0,
               flat: bool = False):
    """Returns (reset, recurrent_fn): a fake model replaying precomputed per-simulation outputs.

    With `flat`, every output is zero (all children tie).
    """
    rng = np.random.default_rng(seed)
    prefix = rng.standard_normal((num_simulations, batch)).astype(np.float32)
    value = rng.standard_normal((num_simulations, batch)).astype(np.float32)
    logits = rng.standard_normal((num_simulations, batch, num_actions)).astype(np.float32)
    if flat:
        prefix, value, logits = np.zeros_like(prefix), np.zeros_like(value), np.zeros_like(logits)
    outputs = [(prefix[s], value[s], logits[s]) for s in range(num_simulations)]
    state = {"it": iter(outputs)}

    def reset() -> None:
        state["it"] = iter(outputs)

    def recurrent_fn(parent_ids, actions, depths):
        return next(state["it"])

    return reset, recurrent_fn


def bench(batch: int, num_actions: int = 4, num_simulations: int = 50, repeats: int = 15,
          seed: int = 0, flat: bool = False) -> dict[str, float]:
    """Median wall time of `repeats` searches (after a warm-up) and derived figures."""
    rng = np.random.default_rng(seed + 1)
    root_logits = rng.standard_normal((batch, num_actions)).astype(np.float32)
    root_values = rng.standard_normal(batch).astype(np.float32)
    noise = rng.dirichlet(np.full(num_actions, 0.3), size=batch).astype(np.float32)
    if flat:
        root_logits, root_values = np.zeros_like(root_logits), np.zeros_like(root_values)
        noise = None
    cfg = MCTSConfig(num_simulations=num_simulations)
    reset, fn = make_model(batch, num_actions, num_simulations, seed, flat)

    walls = []
    for i in range(repeats + 1):
        reset()
        start = time.perf_counter()
        out = run_mcts(root_logits, root_values, fn, cfg, noise=noise, seed=seed + i)
        wall = time.perf_counter() - start
        if i > 0:  # the first run is a warm-up
            walls.append(wall)
    assert (out.visit_counts.sum(axis=1) == num_simulations).all()

    # Cost of the fake model itself: the same num_simulations calls, in a bare Python loop.
    ids = np.zeros(batch, np.int64)
    fn_walls = []
    for _ in range(repeats):
        reset()
        start = time.perf_counter()
        for _ in range(num_simulations):
            fn(ids, ids, ids)
        fn_walls.append(time.perf_counter() - start)

    wall = statistics.median(walls)
    fn_wall = statistics.median(fn_walls)
    return {
        "batch": batch,
        "wall_ms": wall * 1e3,
        "sims_per_s": batch * num_simulations / wall,
        "us_per_sim_per_root": wall / (batch * num_simulations) * 1e6,
        "outside_fn": max(0.0, 1.0 - fn_wall / wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--actions", type=int, default=4)
    parser.add_argument("--simulations", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--flat", action="store_true",
                        help="flat model: every selection step is a tie (worst case for ties)")
    args = parser.parse_args()

    print(f"cython_mcts.run_mcts: {args.actions} actions, {args.simulations} simulations, "
          f"median of {args.repeats} runs{', flat model (all ties)' if args.flat else ''}")
    print(f"{'B':>5} {'ms/search':>10} {'sims/s':>12} {'us/sim/root':>12} {'outside fn':>11}")
    for batch in args.batches:
        r = bench(batch, args.actions, args.simulations, args.repeats, flat=args.flat)
        print(f"{r['batch']:>5} {r['wall_ms']:>10.3f} {r['sims_per_s']:>12,.0f} "
              f"{r['us_per_sim_per_root']:>12.3f} {r['outside_fn']:>10.1%}")


if __name__ == "__main__":
    main()
