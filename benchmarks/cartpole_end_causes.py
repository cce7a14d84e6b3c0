"""Why greedy CartPole games end: the cart out of bounds, the pole fallen, or the time limit.

    python benchmarks/learn.py tuned_examples/cartpole.yaml --seeds 2 --save-checkpoints /tmp/ck
    python benchmarks/cartpole_end_causes.py /tmp/ck/barlow_seed2/env_steps_* --name seed2

Each checkpoint is loaded as `rllib evaluate` loads it (`evaluate.load_algorithm`: the module
only, greedy search, the training run's seed and envs per runner) and plays `--episodes` whole
games. A game's end is read from its last observation (x, x_dot, theta, theta_dot) against the
env's own thresholds (|x| > 2.4: the cart left the track; |theta| > 12 degrees: the pole fell);
a game that ends with neither is cut by the time limit. The games are those of the training run's
evaluation at that point whenever the greedy search draws no random numbers (Gumbel; pUCT breaks
ties from the evaluation runner's streams, fresh here, advanced at a run's later points). Per
game it also records where the cart went (final x, max |x|) and the pole's largest angle, so a
drift shows even in games that last.

Writes `benchmarks/results/cartpole_end_causes_<name>.json`:
    [{"checkpoint", "episodes", "eval_mean", "causes": {"cart_out": n, "pole_fell": n,
      "time_limit": n}, "games": [{"return", "length", "cause", "final_x", "max_abs_x",
      "max_abs_theta_deg"}]}]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]



def _thresholds() -> tuple[float, float]:
    """CartPole-v1's own termination thresholds: |x| (2.4) and |theta| in radians (12 degrees)."""
    import gymnasium as gym

    env = gym.make("CartPole-v1").unwrapped
    return float(env.x_threshold), float(env.theta_threshold_radians)


X_THRESHOLD, THETA_THRESHOLD = _thresholds()


def end_cause(last_observation: np.ndarray) -> str:
    """'cart_out', 'pole_fell' or 'time_limit' from a game's last observation [4]."""
    x, _, theta, _ = (float(v) for v in last_observation)
    if abs(x) > X_THRESHOLD:
        return "cart_out"
    if abs(theta) > THETA_THRESHOLD:
        return "pole_fell"
    return "time_limit"


def describe_game(observations: np.ndarray, game_return: float) -> dict[str, Any]:
    """One game's record from its observations [T+1, 4] (reset frame included)."""
    observations = np.asarray(observations, dtype=np.float64)
    return {
        "return": game_return,
        "length": int(observations.shape[0] - 1),
        "cause": end_cause(observations[-1]),
        "final_x": round(float(observations[-1, 0]), 3),
        "max_abs_x": round(float(np.abs(observations[:, 0]).max()), 3),
        "max_abs_theta_deg": round(float(np.degrees(np.abs(observations[:, 2]).max())), 2),
    }


def play_checkpoint(checkpoint: str, episodes: int) -> dict[str, Any]:
    from rllib_barlowzero.evaluate import find_checkpoint, load_algorithm, trained_config

    checkpoint = find_checkpoint(checkpoint)
    config = trained_config(checkpoint)
    envs = int((config.get("evaluation_config") or {}).get("num_envs_per_env_runner")
               or config["num_envs_per_env_runner"])
    trained = config["env"]
    if trained != "CartPole-v1":
        raise SystemExit(f"error: {checkpoint} was trained on {trained!r}, not CartPole-v1")
    algo = load_algorithm(checkpoint, seed=None, envs_per_env_runner=envs)
    try:
        played = algo.eval_env_runner.sample(num_episodes=episodes, explore=False)
    finally:
        algo.stop()
    games = [describe_game(np.asarray(e.get_observations()), float(e.get_return()))
             for e in played]
    return {
        "checkpoint": checkpoint,
        "episodes": len(games),
        "eval_mean": round(float(np.mean([g["return"] for g in games])), 2),
        "causes": dict(Counter(g["cause"] for g in games)),
        "games": games,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--name", required=True, help="record: cartpole_end_causes_<name>.json")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args(argv)
    if args.episodes < 1:
        print("error: --episodes must be >= 1", file=sys.stderr)
        return 2

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    records = []
    try:
        for checkpoint in args.checkpoints:
            record = play_checkpoint(checkpoint, args.episodes)
            records.append(record)
            lengths = [g["length"] for g in record["games"]]
            print(f"{checkpoint}: mean {record['eval_mean']:.1f} (lengths {min(lengths)}-"
                  f"{max(lengths)}), ends {record['causes']}, final x "
                  f"{np.mean([g['final_x'] for g in record['games']]):+.2f} on average",
                  flush=True)
    finally:
        ray.shutdown()
    out = Path(args.out_dir) / f"cartpole_end_causes_{args.name}.json"
    out.write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
