"""What torch's NaN fill of new tensors costs the Atari pipeline, and what turning it off buys.

RLlib's seeding turns on `torch.use_deterministic_algorithms(True)` on CPU builds, and with it
`torch.utils.deterministic.fill_uninitialized_memory`, which writes NaN into every new tensor
before the op that made it writes its result. The module turns the fill off at setup
(`rllib_barlowzero.torch.networks.skip_uninitialized_memory_fill`). This builds BarlowZero from a
tuned example (default `tuned_examples/breakout_cpu.yaml`), fills the replay buffer, then times
the three stages with the fill on and off, alternating within each repeat so that both see the
same machine load:

- a learner update (one gradient step on a reanalyzed batch),
- a reanalyze batch (sampling, target values, fresh searches),
- self-play (one `sample` of 4 steps in each env, the search included).

Prints the medians and their ratios and writes `benchmarks/results/bench_memory_fill_<yaml>.json`.
Run: python benchmarks/bench_memory_fill.py [--yaml FILE] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import ray
import torch
from bench_atari import build, fill_replay_buffer, reanalyze_and_update, self_play_round

ROOT = Path(__file__).resolve().parents[1]


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--yaml", default=str(ROOT / "tuned_examples/breakout_cpu.yaml"))
    parser.add_argument("--warmup-steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None,
                        help="JSON path (default: "
                        "benchmarks/results/bench_memory_fill_<yaml stem>.json)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    algo = build(Path(args.yaml), None, "cpu")
    cfg = algo.config
    if not torch.are_deterministic_algorithms_enabled():
        raise RuntimeError("expected RLlib's seeding to turn deterministic algorithms on; "
                           "does the tuned example set a seed?")
    collected = sum(n for _, n in fill_replay_buffer(algo, args.warmup_steps))
    print(f"{Path(args.yaml).name}: channels={cfg.channels} sims={cfg.num_simulations} "
          f"batch={cfg.batch_size} envs={cfg.num_envs_per_env_runner} "
          f"threads={torch.get_num_threads()}; {collected} env steps in the buffer", flush=True)

    reanalyze, update = reanalyze_and_update(algo)

    stages = {"learner_update": update, "reanalyze_batch": reanalyze,
              "self_play_sample": lambda: self_play_round(algo)}
    reanalyze()
    update()  # builds the optimizer state
    times: dict[str, dict[bool, list[float]]] = {name: {True: [], False: []} for name in stages}
    for repeat in range(args.repeats):
        for fill in (True, False) if repeat % 2 == 0 else (False, True):
            torch.utils.deterministic.fill_uninitialized_memory = fill
            for name, fn in stages.items():
                times[name][fill].append(seconds(fn))
    torch.utils.deterministic.fill_uninitialized_memory = False
    algo.stop()

    record: dict[str, object] = {"yaml": Path(args.yaml).name, "repeats": args.repeats,
                                 "threads": torch.get_num_threads()}
    print(f"\n{'stage':18} {'fill on (ms)':>13} {'fill off (ms)':>14} {'on / off':>9}")
    for name in stages:
        on = 1000 * statistics.median(times[name][True])
        off = 1000 * statistics.median(times[name][False])
        record[name] = {"fill_on_ms": round(on, 1), "fill_off_ms": round(off, 1),
                        "on_over_off": round(on / off, 3)}
        print(f"{name:18} {on:13.1f} {off:14.1f} {on / off:9.3f}")
    default = ROOT / "benchmarks" / "results" / f"bench_memory_fill_{Path(args.yaml).stem}.json"
    out = Path(args.out) if args.out else default
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
