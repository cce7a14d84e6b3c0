"""Learning benchmark: BarlowZero / EfficientZero / MuZero on CartPole-v1 side by side.

Trains `tuned_examples/cartpole.yaml` once per consistency loss (barlow, simsiam, none) and
evaluates 32 greedy-search episodes every `--eval-every` env steps. Prints the learning curves,
the first env step at which the evaluation mean reached 475, and the wall time; writes them as JSON.

    python benchmarks/learn_cartpole.py --out results/learn_cartpole.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import ray
import yaml

from rllib_barlowzero import BarlowZeroConfig

ROOT = Path(__file__).resolve().parents[1]
# Each method with its own consistency weight: the paper's 0.001 for Barlow Twins,
# EfficientZero's 2 for SimSiam.
CONSISTENCY_COEFF = {"barlow": 0.001, "simsiam": 2.0, "none": 0.0}


def load_config(loss: str, seed: int, path: Path = ROOT / "tuned_examples/cartpole.yaml"
                ) -> BarlowZeroConfig:
    (experiment,) = yaml.safe_load(Path(path).read_text()).values()
    config = BarlowZeroConfig().environment(experiment["env"])
    config.update_from_dict(experiment["config"])
    return config.training(
        consistency_loss=loss, consistency_loss_coeff=CONSISTENCY_COEFF[loss]
    ).debugging(seed=seed).evaluation(evaluation_interval=None)


def run(loss: str, env_steps: int, eval_every: int, eval_episodes: int, seed: int,
        path: Path) -> dict:
    config = load_config(loss, seed, path).evaluation(evaluation_duration=eval_episodes)
    algo = config.build_algo()
    start = time.time()
    curve, next_eval, sampled, solved_at = [], eval_every, 0, None
    while sampled < env_steps:
        result = algo.train()
        sampled = int(result["env_runners"]["num_env_steps_sampled_lifetime"])
        if result["training_iteration"] % 10 == 0:
            learner = result.get("learners", {}).get("default_policy", {})
            print(f"  {loss}: {sampled} env steps, {result.get('training_steps_done', 0)} "
                  f"training steps, total loss {learner.get('total_loss', float('nan')):.3f}, "
                  f"{time.time() - start:.0f} s", flush=True)
        if sampled >= next_eval or sampled >= env_steps:
            next_eval += eval_every
            evaluation = algo.evaluate()["env_runners"]
            point = {
                "env_steps": sampled,
                "training_steps": int(result.get("training_steps_done", 0)),
                "wall_s": round(time.time() - start, 1),
                "eval_mean": float(evaluation["episode_return_mean"]),
                "eval_min": float(evaluation["episode_return_min"]),
                "eval_max": float(evaluation["episode_return_max"]),
                "learner_idle_share": float(result.get("learner_idle_share", float("nan"))),
            }
            curve.append(point)
            print(loss, point, flush=True)
            if solved_at is None and point["eval_mean"] >= 475:
                solved_at = sampled
    algo.stop()
    return {"loss": loss, "curve": curve, "solved_at_env_steps": solved_at,
            "wall_s": round(time.time() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--losses", nargs="+", default=["barlow", "simsiam", "none"])
    parser.add_argument("--env-steps", type=int, default=30_000)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--eval-episodes", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--yaml", default=str(ROOT / "tuned_examples/cartpole.yaml"))
    parser.add_argument("--out", default="results/learn_cartpole.json")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    runs = [run(loss, args.env_steps, args.eval_every, args.eval_episodes, args.seed,
                Path(args.yaml)) for loss in args.losses]
    print(f"\n{'loss':8} {'wall s':>8} {'solved at':>10}  eval mean by env steps")
    for r in runs:
        curve = "  ".join(f"{p['env_steps']}:{p['eval_mean']:.0f}" for p in r["curve"])
        print(f"{r['loss']:8} {r['wall_s']:8.0f} {str(r['solved_at_env_steps']):>10}  {curve}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
