"""Greedy play of an untrained agent through the evaluation pipeline, beside random play.

An untrained network is flat (uniform policy, zero values), so every search choice is a tie. With
seeded random tie-breaking the greedy agent must play like a random one and end its games well
before the move cap; with ties sent to the lowest action (the first version of the search) it
played NOOP forever in Breakout's serve state and every game ran to the cap.

    python benchmarks/untrained_greedy_eval.py tuned_examples/breakout_cpu.yaml --episodes 32

Writes `benchmarks/results/untrained_greedy_<yaml stem>.json` (scores, lengths, games cut at the
move cap, for the greedy agent and for uniformly random actions on the same evaluation env).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import ray
import yaml

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.evaluate import format_table, play_games, summary_statistics

ROOT = Path(__file__).resolve().parents[1]


def random_play(algo, episodes: int, seed: int) -> dict:
    """Uniformly random actions on one evaluation env (same wrappers, cap and rewards)."""
    env = algo.eval_env_runner.env.unwrapped.envs[0]
    rng = np.random.default_rng(seed)
    scores, lengths, truncated = [], [], 0
    for game in range(episodes):
        env.reset(seed=seed + game)
        score, length, done = 0.0, 0, False
        while not done:
            _, reward, terminated, cut, _ = env.step(int(rng.integers(env.action_space.n)))
            score, length, done = score + float(reward), length + 1, terminated or cut
        scores.append(score)
        lengths.append(length)
        truncated += int(cut)
    return {"scores": scores, "lengths": lengths, "truncated": truncated,
            "score": summary_statistics(scores), "length": summary_statistics(lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("yaml", nargs="?", default=str(ROOT / "tuned_examples/breakout_cpu.yaml"))
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    (experiment,) = yaml.safe_load(Path(args.yaml).read_text()).values()
    config = BarlowZeroConfig().environment(experiment["env"])
    config.update_from_dict(experiment["config"])
    config.debugging(seed=args.seed).evaluation(evaluation_num_env_runners=0)
    algo = config.build_algo()
    start = time.time()
    greedy = play_games(algo, episodes=args.episodes, progress=False)
    print(format_table(greedy))
    random = random_play(algo, args.episodes, args.seed)
    print(f"random actions: score max {random['score']['max']:.1f} / mean "
          f"{random['score']['mean']:.2f} / min {random['score']['min']:.1f}, length mean "
          f"{random['length']['mean']:.0f}, {random['truncated']} games cut at the move cap")
    record = {"env": str(config.env), "yaml": str(Path(args.yaml).name), "seed": args.seed,
              "max_moves": config.max_moves, "greedy_untrained": greedy, "random": random,
              "wall_s": round(time.time() - start, 1)}
    out = Path(args.out or ROOT / f"benchmarks/results/untrained_greedy_{Path(args.yaml).stem}"
                                  ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    algo.stop()


if __name__ == "__main__":
    main()
