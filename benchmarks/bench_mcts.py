"""Throughput of the compiled batched MCTS (`cython_mcts.run_mcts`, pUCT, and
`cython_mcts.run_gumbel_mcts`, Gumbel MuZero) with a free fake model.

Simulations per second = B * num_simulations / wall time of one search call, for B roots,
4 actions, 50 simulations (EfficientZero's Atari setting), each search on the same inputs (the
Gumbel search with Gumbel(0, 1) noise and mctx's defaults: 16 considered actions, value_scale
0.1, maxvisit_init 50). The fake model returns precomputed
arrays indexed by simulation, so the time is the search's own: selection, expansion, backup and
the per-simulation Python glue. "outside fn" is the share of the wall time not spent inside
`recurrent_fn` (the fake model's own cost is measured by calling it in a bare loop).

`--flat` replaces the random outputs by a flat model (equal logits, zero values and rewards, equal
root logits, no noise): every pUCT selection step is then a tie, drawn from the search's seeded
tie generator, which measures the tie-breaking path at its most expensive (the Gumbel search
breaks ties deterministically; for it the flat model is just another input).

Usage: python benchmarks/bench_mcts.py [--repeats 15] [--batches 1 16 64 256] [--flat]
                                       [--searches puct gumbel]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from cython_mcts import MCTSConfig, run_gumbel_mcts, run_mcts

SEARCHES = {"puct": "cython_mcts.run_mcts", "gumbel": "cython_mcts.run_gumbel_mcts"}


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
          seed: int = 0, flat: bool = False, search: str = "puct") -> dict[str, float]:
    """Median wall time of `repeats` searches (after a warm-up) and derived figures.

    `search`: "puct" (`run_mcts`) or "gumbel" (`run_gumbel_mcts`)."""
    rng = np.random.default_rng(seed + 1)
    root_logits = rng.standard_normal((batch, num_actions)).astype(np.float32)
    root_values = rng.standard_normal(batch).astype(np.float32)
    noise = rng.dirichlet(np.full(num_actions, 0.3), size=batch).astype(np.float32)
    gumbel = rng.gumbel(size=(batch, num_actions)).astype(np.float32)
    if flat:
        root_logits, root_values = np.zeros_like(root_logits), np.zeros_like(root_values)
        noise, gumbel = None, np.zeros_like(gumbel)
    cfg = MCTSConfig(num_simulations=num_simulations)
    reset, fn = make_model(batch, num_actions, num_simulations, seed, flat)

    walls = []
    for i in range(repeats + 1):
        reset()
        start = time.perf_counter()
        if search == "gumbel":
            out = run_gumbel_mcts(root_logits, root_values, fn, cfg, gumbel)
        else:
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
        "search": search,
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
    parser.add_argument("--searches", nargs="+", choices=sorted(SEARCHES),
                        default=["puct", "gumbel"], help="which searches to time (default: both)")
    args = parser.parse_args()

    rates: dict[str, dict[int, float]] = {}
    for search in args.searches:
        print(f"{SEARCHES[search]}: {args.actions} actions, {args.simulations} simulations, "
              f"median of {args.repeats} runs{', flat model (all ties)' if args.flat else ''}")
        print(f"{'B':>5} {'ms/search':>10} {'sims/s':>12} {'us/sim/root':>12} {'outside fn':>11}")
        for batch in args.batches:
            r = bench(batch, args.actions, args.simulations, args.repeats, flat=args.flat,
                      search=search)
            rates.setdefault(search, {})[batch] = r["sims_per_s"]
            print(f"{r['batch']:>5} {r['wall_ms']:>10.3f} {r['sims_per_s']:>12,.0f} "
                  f"{r['us_per_sim_per_root']:>12.3f} {r['outside_fn']:>10.1%}")
    if {"puct", "gumbel"} <= set(rates):
        print("sims/s, Gumbel vs pUCT")
        print(f"{'B':>5} {'pUCT':>12} {'Gumbel':>12} {'ratio':>7}")
        for batch in args.batches:
            puct, gumbel = rates["puct"][batch], rates["gumbel"][batch]
            print(f"{batch:>5} {puct:>12,.0f} {gumbel:>12,.0f} {gumbel / puct:>7.2f}")


if __name__ == "__main__":
    main()
