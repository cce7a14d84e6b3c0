"""Adds a finished `rllib train file` trial and its `rllib evaluate` report to a learning record.

For runs that stop on wall time rather than env steps (`breakout_cpu.yaml`: one hour), which
`benchmarks/learn.py` does not drive: train with the README's command, evaluate the final
checkpoint, then

    python benchmarks/record_trial.py TRIAL_DIR EVALUATION_JSON --yaml tuned_examples/X.yaml

merges one run into `benchmarks/results/learning_<name>.json` (learn.py's format, one curve
point: the trial's last result and the evaluation's greedy games; `truncated` counts the games
cut at the move cap) and redraws its PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learn  # noqa: E402  (benchmarks/ is not a package)

from rllib_barlowzero.barlowzero import TRAINING_DEFAULTS  # noqa: E402
from rllib_barlowzero.experiments import load_yaml  # noqa: E402


def last_result(trial_dir: Path) -> dict[str, Any]:
    lines = (trial_dir / "result.json").read_text().strip().splitlines()
    if not lines:
        raise SystemExit(f"{trial_dir}/result.json has no results")
    return json.loads(lines[-1])


def trial_run(trial_dir: Path, report: dict[str, Any], yaml_path: Path) -> dict[str, Any]:
    """The record's entry for the trial (see benchmarks/learn.py's docstring)."""
    (experiment, spec), *others = load_yaml(str(yaml_path)).items()
    if others:
        raise SystemExit(f"{yaml_path}: expected one experiment, found {1 + len(others)}")
    result = last_result(trial_dir)
    params = json.loads((trial_dir / "params.json").read_text())
    scores = report["scores"]
    env_steps = int(result["env_runners"]["num_env_steps_sampled_lifetime"])
    point = {
        "target_env_steps": env_steps,
        "env_steps": env_steps,
        "training_steps": int(result["training_steps_done"]),
        "wall_s": round(float(result["time_total_s"]), 2),
        "eval_mean": float(sum(scores) / len(scores)),
        "eval_min": float(min(scores)),
        "eval_max": float(max(scores)),
        "episodes": int(report["episodes"]),
        "truncated": int(report["truncated"]),
        "eval_s": float(report["seconds"]),
        "checkpoint": report["checkpoint"],
    }
    # Tune's params.json holds the settings the trial ran with as given (the YAML's config with
    # `rllib train file --config` merged in, and the env); the rest are the algorithm's defaults.
    config = {key: value for key, value in params.items() if key != "env"}
    return {
        "env": params.get("env", spec["env"]),
        "loss": config.get("consistency_loss", TRAINING_DEFAULTS["consistency_loss"]),
        "seed": int(config["seed"]),
        "experiment": experiment,
        "config": config,
        "stop": spec.get("stop"),
        "trial": str(trial_dir),
        "curve": [point],
        "final_eval_mean": point["eval_mean"],
        "wall_s": point["wall_s"],
        "finished": True,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trial_dir", type=Path, help="the Tune trial folder (result.json)")
    parser.add_argument("evaluation", type=Path, help="`rllib evaluate --out` JSON report")
    parser.add_argument("--yaml", type=Path, required=True, help="the tuned example it ran")
    parser.add_argument("--name", help="record name (default: the YAML file stem)")
    parser.add_argument("--out-dir", type=Path, default=learn.ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    report = json.loads(args.evaluation.read_text())
    run = trial_run(args.trial_dir, report, args.yaml)
    name = args.name or args.yaml.stem
    merged = learn.record_runs(args.out_dir, name, [run])
    point = run["curve"][0]
    print(f"{run['loss']} seed {run['seed']}: {point['env_steps']} env steps, "
          f"{point['training_steps']} training steps in {point['wall_s']:.0f} s; greedy mean "
          f"{point['eval_mean']:.2f} [{point['eval_min']:g}, {point['eval_max']:g}] over "
          f"{point['episodes']} games, {point['truncated']} cut at the move cap; "
          f"{len(merged)} runs in learning_{name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
