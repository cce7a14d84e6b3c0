"""Random play on an Atari game through the evaluation pipeline: the floor a trained agent beats.

    python benchmarks/atari_random_baseline.py --env BreakoutNoFrameskip-v4 --episodes 32
"""

from __future__ import annotations

import argparse

import numpy as np

from rllib_barlowzero.env import make_atari_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--max-moves", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    env = make_atari_env(args.env, training=False, max_moves=args.max_moves, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    scores = []
    for _ in range(args.episodes):
        env.reset()
        score, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            score += reward
            done = terminated or truncated
        scores.append(score)
    s = np.asarray(scores)
    print(f"random play on {args.env}, {args.episodes} games: max {s.max():.1f} / "
          f"mean {s.mean():.2f} / min {s.min():.1f} (std {s.std():.2f})")


if __name__ == "__main__":
    main()
