"""Random (and constant-action) play on an Atari game through the evaluation pipeline: the floor
a trained agent beats.

    python benchmarks/atari_random_baseline.py --env BreakoutNoFrameskip-v4 --episodes 32
    python benchmarks/atari_random_baseline.py --policies random NOOP FIRE RIGHT LEFT \\
        --fire-on-life-start both --out benchmarks/results/breakout_baselines.json

A constant action is named as the game names it (``env.unwrapped.get_action_meanings()``). Each
policy plays the same games (episode i is reset with seed ``--seed + i``); the move cap is the
evaluation's (``--max-moves``), and games cut by it are counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rllib_barlowzero.env import make_atari_env


def play(env_id: str, policy: str, episodes: int, max_moves: int, seed: int,
         fire_on_life_start: bool) -> dict:
    env = make_atari_env(env_id, training=False, max_moves=max_moves,
                         fire_on_life_start=fire_on_life_start)
    meanings = env.unwrapped.get_action_meanings()
    if policy != "random" and policy not in meanings:
        raise SystemExit(f"--policies: {policy!r} is not 'random' or an action of {env_id} "
                         f"({meanings})")
    rng = np.random.default_rng(seed)
    scores, capped = [], 0
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        score, done = 0.0, False
        while not done:
            action = (int(rng.integers(env.action_space.n)) if policy == "random"
                      else meanings.index(policy))
            _, reward, terminated, truncated, _ = env.step(action)
            score += reward
            done = terminated or truncated
        scores.append(score)
        capped += int(truncated)
    s = np.asarray(scores)
    return {"policy": policy, "fire_on_life_start": fire_on_life_start, "episodes": episodes,
            "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
            "max": float(s.max()), "games_at_move_cap": capped, "scores": s.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--max-moves", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", nargs="+", default=["random"],
                        help="'random' and/or action names (NOOP, FIRE, RIGHT, LEFT, ...)")
    parser.add_argument("--fire-on-life-start", choices=["off", "on", "both"], default="off",
                        help="the env_config setting of that name (both: one row for each)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    fire = {"off": [False], "on": [True], "both": [False, True]}[args.fire_on_life_start]
    rows = []
    for fire_on_life_start in fire:
        for policy in args.policies:
            row = play(args.env, policy, args.episodes, args.max_moves, args.seed,
                       fire_on_life_start)
            rows.append(row)
            print(f"{policy} play on {args.env} (fire_on_life_start={fire_on_life_start}), "
                  f"{args.episodes} games: max {row['max']:.1f} / mean {row['mean']:.2f} / "
                  f"min {row['min']:.1f} (std {row['std']:.2f}), {row['games_at_move_cap']} "
                  "at the move cap", flush=True)
    if args.out:
        record = {"env": args.env, "max_moves": args.max_moves, "seed": args.seed, "rows": rows}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
