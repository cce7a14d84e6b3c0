"""Learning benchmark: train a tuned example once per consistency loss and seed, evaluate greedily.

    python benchmarks/learn.py tuned_examples/cartpole.yaml --losses barlow simsiam none \\
        --seeds 0 1 2 --threshold 475
    python benchmarks/learn.py tuned_examples/cartpole.yaml --seeds 1 &   # one process per seed,
    python benchmarks/learn.py tuned_examples/cartpole.yaml --seeds 2 &   # one record
    python benchmarks/learn.py tuned_examples/cartpole.yaml --plot-only

Each run (a loss and a seed) builds `BarlowZeroConfig().environment(env).update_from_dict(config)`
from the YAML experiment (`{name: {run, env, stop, config}}`, the `rllib train file` format),
trains it with `algo.train()` and evaluates it with `algo.evaluate()`: `--eval-episodes` whole
greedy-search games (a fixed quota per env slot, so short games are not over-represented). The
evaluations stand at fixed env-step points: every `--eval-every` env steps (the first at
`--eval-every`) and at the end (`--env-steps`). An iteration samples a set number of env steps
(a fragment per env slot, a few more where episodes end), so each point is evaluated after the
first iteration at or past it, and the record holds the env steps actually reached. Nothing here
draws random numbers or depends on timing: the same seed and settings give the same curve.

Losses and their coefficients:
  * A YAML file with one experiment: `--losses` overrides its `consistency_loss`. The YAML's own
    loss runs as written (a coefficient the YAML sets is that method's recipe for the task, and
    takes effect); every other loss runs with its method's own coefficients, as does the YAML's
    own loss for a coefficient it leaves unset (`--keep-coefficients` keeps the YAML's for all):
        barlow   consistency 0.001, policy 10, value 0.25   (BarlowZero, the paper's Table 2)
        simsiam  consistency 2,     policy 1,  value 0.25   (EfficientZero)
        none     consistency 0,     policy 1,  value 0.25   (MuZero: no consistency loss)
  * A YAML file with several experiments, each with a `consistency_loss` in its config (one per
    loss): `--losses` picks experiments by that value, and each runs with its own config as
    written (default: all of them).
  `--config '{"lr": 0.05}'` then overrides any setting (coefficients too) for every run; `--seeds`
  sets `seed`; `--eval-episodes` sets `evaluation_duration`. Each run prints the coefficients it
  used and where they came from.

Output, written after each evaluation point (so a killed invocation keeps what it evaluated):
`<out-dir>/learning_<name>.json` (default: benchmarks/results/ of this repository; `<name>`: the
YAML file's stem unless `--name`), a list of runs:
    {"env", "loss", "seed", "experiment",
     "config": {the settings applied with update_from_dict, overrides included},
     "eval_every", "env_steps_budget",
     "curve": [{"target_env_steps",  # the fixed point it stands for (the last one passed)
                "env_steps", "training_steps",  # reached when evaluated
                "wall_s",            # training wall time so far, evaluations excluded
                "eval_mean", "eval_min", "eval_max",  # greedy returns of the whole games
                "episodes", "truncated",  # games played; those cut by a time or move limit
                "eval_s",            # seconds the evaluation took
                "checkpoint"}],      # with --save-checkpoints: where the algorithm was saved
     "final_eval_mean",              # the last point's eval_mean
     "threshold", "first_env_steps_at_or_above", "stays_at_or_above_after",  # with --threshold
     "wall_s",                       # the whole run so far, evaluations included
     "finished"}                     # False while the run goes on (or when it was killed)
and `<out-dir>/learning_<name>.png`: per loss, the mean over seeds of eval_mean against env steps
with the min-max band over seeds. Runs spread over several invocations (even at the same time:
the read-merge-write holds a lock on the output folder) merge into one record: a run replaces one
with the same env, loss, seed and identical config, and is appended otherwise.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rllib_barlowzero.barlowzero import TRAINING_DEFAULTS
from rllib_barlowzero.experiments import UserError, load_yaml, parse_json_arg

ROOT = Path(__file__).resolve().parents[1]
COEFF_KEYS = ("consistency_loss_coeff", "policy_loss_coeff", "value_loss_coeff")
# Each method with its own coefficients: BarlowZero's Table 2, EfficientZero's for SimSiam, and
# MuZero (no consistency loss) with EfficientZero's value and policy weights.
LOSS_COEFFICIENTS: dict[str, dict[str, float]] = {
    "barlow": {key: TRAINING_DEFAULTS[key] for key in COEFF_KEYS},  # the paper's Table 2
    "simsiam": {"consistency_loss_coeff": 2.0, "policy_loss_coeff": 1.0,
                "value_loss_coeff": 0.25},
    "none": {"consistency_loss_coeff": 0.0, "policy_loss_coeff": 1.0, "value_loss_coeff": 0.25},
}
LOSS_ORDER = ("barlow", "simsiam", "none")
DEFAULT_LOSS = TRAINING_DEFAULTS["consistency_loss"]  # the loss of a YAML that names none
LOSS_COLOURS = {"barlow": "tab:blue", "simsiam": "tab:orange", "none": "tab:green"}
ENV_STEPS_STOP_KEYS = ("env_runners/num_env_steps_sampled_lifetime",
                       "num_env_steps_sampled_lifetime")
SEARCH_SPACES = ("grid_search", "choice", "uniform", "loguniform", "randint")
RUN_KEYS = ("env", "loss", "seed", "config", "curve", "final_eval_mean", "wall_s")
POINT_KEYS = ("env_steps", "training_steps", "wall_s", "eval_mean", "eval_min", "eval_max",
              "episodes", "truncated")


class BenchmarkError(Exception):
    """A mistake in the command line or the YAML file: reported as one line."""


@dataclass
class RunSpec:
    """One run to train: a loss and a seed, with the settings it is built from."""

    experiment: str
    env: Any
    loss: str
    seed: int
    config: dict[str, Any]
    coefficient_sources: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# YAML -> runs
# --------------------------------------------------------------------------------------------
def load_experiments(path: Path) -> dict[str, dict[str, Any]]:
    """The experiments of a YAML file, `{name: {run, env, stop, config}}` (read as the CLI does)."""
    try:
        data = load_yaml(str(path))
    except UserError as e:
        raise BenchmarkError(str(e)) from None
    for name, spec in data.items():
        if spec.get("run", "BarlowZero") != "BarlowZero":
            raise BenchmarkError(f"experiment '{name}': run is {spec['run']!r}, not BarlowZero")
        if not isinstance(spec.get("config") or {}, dict):
            raise BenchmarkError(f"experiment '{name}': config must be a mapping")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` updated with `override`; nested dicts are merged key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _search_space_path(value: Any, path: str = "config") -> str | None:
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in SEARCH_SPACES:
            return path
        for key, sub in value.items():
            found = _search_space_path(sub, f"{path}.{key}")
            if found:
                return found
    return None


def select_experiments(experiments: dict[str, dict[str, Any]], losses: list[str] | None
                       ) -> list[tuple[str, str]]:
    """(loss, experiment name) pairs to run.

    One experiment: every loss asked for (default: barlow, simsiam, none) runs it. Several: each
    must name its `consistency_loss`, and `losses` picks among them (default: all).
    """
    if len(experiments) == 1:
        (name,) = experiments
        chosen = list(losses or LOSS_ORDER)
        for loss in chosen:
            if loss not in LOSS_COEFFICIENTS:
                raise BenchmarkError(f"unknown loss {loss!r}; known: {', '.join(LOSS_ORDER)}")
        return [(loss, name) for loss in chosen]
    by_loss: dict[str, str] = {}
    for name, spec in experiments.items():
        loss = (spec.get("config") or {}).get("consistency_loss")
        if loss is None:
            raise BenchmarkError(
                f"experiment '{name}' has no consistency_loss: a YAML file with several "
                "experiments must hold one experiment per consistency loss"
            )
        if loss in by_loss:
            raise BenchmarkError(
                f"experiments '{by_loss[loss]}' and '{name}' both have consistency_loss {loss!r}"
            )
        by_loss[loss] = name
    chosen = list(losses or by_loss)
    missing = [loss for loss in chosen if loss not in by_loss]
    if missing:
        raise BenchmarkError(
            f"no experiment with consistency_loss {', '.join(map(repr, missing))}; the file has "
            f"{', '.join(f'{n} ({loss})' for loss, n in by_loss.items())}"
        )
    return [(loss, by_loss[loss]) for loss in chosen]


def plan_runs(experiments: dict[str, dict[str, Any]], losses: list[str] | None,
              seeds: Iterable[int], overrides: dict[str, Any] | None = None,
              keep_coefficients: bool = False, eval_episodes: int = 32) -> list[RunSpec]:
    """The runs, seed by seed (so a partial record compares the losses on the same seeds)."""
    overrides = dict(overrides or {})
    if "consistency_loss" in overrides:
        raise BenchmarkError("choose the loss with --losses, not --config consistency_loss")
    single = len(experiments) == 1
    selected = select_experiments(experiments, losses)
    runs = []
    for seed in seeds:
        for loss, name in selected:
            spec = experiments[name]
            config = copy.deepcopy(spec.get("config") or {})
            sources = {key: "yaml" if key in config else "algorithm default"
                       for key in COEFF_KEYS}
            if single:
                own_loss = config.get("consistency_loss", DEFAULT_LOSS)
                config["consistency_loss"] = loss
                if not keep_coefficients:
                    for key, value in LOSS_COEFFICIENTS[loss].items():
                        if loss != own_loss or key not in config:
                            config[key] = value
                            sources[key] = f"{loss} default"
            config = deep_merge(config, overrides)
            for key in COEFF_KEYS:
                if key in overrides:
                    sources[key] = "--config"
            env = config.pop("env", spec.get("env"))
            if env is None:
                raise BenchmarkError(f"experiment '{name}' has no env")
            config["seed"] = int(seed)
            config["evaluation_duration"] = int(eval_episodes)
            config["evaluation_duration_unit"] = "episodes"
            # Evaluation is this benchmark's, at its fixed env-step points, not every N iterations.
            config["evaluation_interval"] = None
            where = _search_space_path(config)
            if where:
                raise BenchmarkError(f"experiment '{name}': {where} is a search space; the "
                                     "benchmark needs one value per setting")
            runs.append(RunSpec(name, env, loss, int(seed),
                                json.loads(json.dumps(config, sort_keys=True)), sources))
    return runs


def build_config(run: RunSpec):
    from rllib_barlowzero import BarlowZeroConfig

    return BarlowZeroConfig().environment(run.env).update_from_dict(copy.deepcopy(run.config))


def default_env_steps(experiments: dict[str, dict[str, Any]], run: RunSpec) -> int:
    """The experiment's stop env steps, else its `total_env_steps` when it has no stop.

    Any other stop (`time_total_s`, `training_iteration`, ...) is refused rather than ignored:
    the curves stand at env-step points so that a seed gives the same curve, and a run silently
    going on to `total_env_steps` is not what the YAML asked for.
    """
    stop = experiments[run.experiment].get("stop") or {}
    for key in ENV_STEPS_STOP_KEYS:
        if key in stop:
            return int(stop[key])
    nested = (stop.get("env_runners") or {}) if isinstance(stop.get("env_runners"), dict) else {}
    if "num_env_steps_sampled_lifetime" in nested:
        return int(nested["num_env_steps_sampled_lifetime"])
    if stop:
        raise BenchmarkError(
            f"experiment {run.experiment!r} stops on {', '.join(sorted(stop))}, which this "
            "benchmark does not honour (it stops at env steps, so that a seed gives the same "
            "curve): pass --env-steps N, or run the file with `rllib train file` and record the "
            "trial with benchmarks/record_trial.py"
        )
    return int(build_config(run).total_env_steps)


def eval_targets(env_steps: int, eval_every: int) -> list[int]:
    """The fixed env-step points: every `eval_every` (the first at `eval_every`) and the end."""
    return [*range(eval_every, env_steps, eval_every), env_steps]


def check_budget(config: Any, env_steps: int) -> None:
    """Collection stops at `total_env_steps`: a run could never reach more env steps."""
    if env_steps > config.total_env_steps:
        raise BenchmarkError(
            f"--env-steps {env_steps} is beyond total_env_steps {config.total_env_steps}, where "
            f"collection stops; raise it with --config '{{\"total_env_steps\": {env_steps}}}'"
        )


def describe_coefficients(run: RunSpec, config: Any) -> str:
    return ", ".join(f"{key}={getattr(config, key):g} ({run.coefficient_sources[key]})"
                     for key in COEFF_KEYS)


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------
def threshold_summary(curve: list[dict[str, Any]], threshold: float | None) -> dict[str, Any]:
    """First env steps with eval_mean >= threshold, and whether every later point stays there."""
    if threshold is None:
        return {"threshold": None, "first_env_steps_at_or_above": None,
                "stays_at_or_above_after": None}
    first = next((i for i, p in enumerate(curve) if p["eval_mean"] >= threshold), None)
    return {
        "threshold": threshold,
        "first_env_steps_at_or_above": None if first is None else curve[first]["env_steps"],
        "stays_at_or_above_after": first is not None and all(
            p["eval_mean"] >= threshold for p in curve[first:]),
    }


def _sampled(result: dict[str, Any]) -> int:
    runners = result.get("env_runners") or {}
    value = runners.get("num_env_steps_sampled_lifetime",
                        result.get("num_env_steps_sampled_lifetime", 0))
    return int(value)


def train_run(run: RunSpec, env_steps: int, eval_every: int, threshold: float | None = None,
              threads: int | None = None, log: Callable[[str], None] = print,
              checkpoint_dir: Path | None = None,
              on_point: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Trains one run to `env_steps`, evaluating at the fixed points; returns its record.

    With `checkpoint_dir`, the algorithm is also saved at each point, to
    `<checkpoint_dir>/<loss>_seed<seed>/env_steps_<point>` (the point's "checkpoint").
    `on_point` gets the run's record so far after each point but the last, with
    `"finished": False` (the returned record has True).
    """
    import torch
    from ray.rllib.core import DEFAULT_MODULE_ID

    config = build_config(run)
    check_budget(config, env_steps)
    tag = f"{run.loss} seed {run.seed}"
    log(f"{tag}: {run.experiment} on {run.env}, {env_steps} env steps, "
        f"{describe_coefficients(run, config)}")
    targets = eval_targets(env_steps, eval_every)
    start = time.perf_counter()
    algo = config.build_algo()
    if threads:
        torch.set_num_threads(threads)  # after setup, which sets its own
    eval_seconds = 0.0
    curve: list[dict[str, Any]] = []
    previous = -1
    try:
        while True:
            result = algo.train()
            sampled = _sampled(result)
            training_steps = int(result.get("training_steps_done", 0))
            wall = time.perf_counter() - start - eval_seconds
            if result.get("training_iteration", 0) % 10 == 0:
                learner = (result.get("learners") or {}).get(DEFAULT_MODULE_ID) or {}
                loss = float(learner.get("total_loss", math.nan))
                log(f"  {tag}: {sampled} env steps, {training_steps} training steps, "
                    f"total loss {loss:.4f}, {wall:.0f} s")
            passed = [t for t in targets if t <= sampled]
            if passed:
                del targets[:len(passed)]
                eval_start = time.perf_counter()
                evaluation = algo.evaluate()["env_runners"]
                seconds = time.perf_counter() - eval_start
                eval_seconds += seconds
                point = {
                    "target_env_steps": passed[-1],
                    "env_steps": sampled,
                    "training_steps": training_steps,
                    "wall_s": round(wall, 2),
                    "eval_mean": float(evaluation["episode_return_mean"]),
                    "eval_min": float(evaluation["episode_return_min"]),
                    "eval_max": float(evaluation["episode_return_max"]),
                    "episodes": int(evaluation["num_episodes"]),
                    "truncated": int(evaluation.get("num_episodes_truncated", 0)),
                    "eval_s": round(seconds, 2),
                }
                if checkpoint_dir is not None:
                    save_start = time.perf_counter()
                    path = checkpoint_dir / f"{run.loss}_seed{run.seed}" / f"env_steps_{passed[-1]}"
                    algo.save_to_path(str(path))
                    point["checkpoint"] = str(path)
                    eval_seconds += time.perf_counter() - save_start
                curve.append(point)
                log(f"{tag}: eval at {sampled} env steps (point {passed[-1]}), {training_steps} "
                    f"training steps: mean {point['eval_mean']:.1f}, min {point['eval_min']:g}, "
                    f"max {point['eval_max']:g} over {point['episodes']} episodes "
                    f"({point['truncated']} truncated), {wall:.0f} s")
            if not targets:
                break
            if passed and on_point is not None:
                on_point(run_record(run, curve, eval_every, env_steps, threshold,
                                    time.perf_counter() - start, finished=False))
            if sampled <= previous:
                raise RuntimeError(f"{tag}: no new env steps after {sampled}")
            previous = sampled
    finally:
        algo.stop()
    return run_record(run, curve, eval_every, env_steps, threshold, time.perf_counter() - start,
                      finished=True)


def run_record(run: RunSpec, curve: list[dict[str, Any]], eval_every: int, env_steps: int,
               threshold: float | None, wall_s: float, finished: bool) -> dict[str, Any]:
    """One run's entry of the record (see the module docstring)."""
    return {
        "env": run.env,
        "loss": run.loss,
        "seed": run.seed,
        "experiment": run.experiment,
        "config": run.config,
        "eval_every": eval_every,
        "env_steps_budget": env_steps,
        "curve": list(curve),
        "final_eval_mean": curve[-1]["eval_mean"],
        **threshold_summary(curve, threshold),
        "wall_s": round(wall_s, 2),
        "finished": finished,
    }


# --------------------------------------------------------------------------------------------
# The record: merge, lock, write
# --------------------------------------------------------------------------------------------
def run_key(run: dict[str, Any]) -> tuple[str, str, int, str]:
    return (json.dumps(run["env"], sort_keys=True), run["loss"], int(run["seed"]),
            json.dumps(run["config"], sort_keys=True))


def merge_runs(existing: list[dict[str, Any]], new: Iterable[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """`existing` with each new run replacing the one with its env, loss, seed and config (in
    place), or appended when there is none."""
    merged = list(existing)
    for run in new:
        key = run_key(run)
        index = next((i for i, old in enumerate(merged) if run_key(old) == key), None)
        if index is None:
            merged.append(run)
        else:
            merged[index] = run
    return merged


def paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    return out_dir / f"learning_{name}.json", out_dir / f"learning_{name}.png"


@contextmanager
def locked(directory: Path):
    """An exclusive lock on `directory` (flock on the folder itself, so no lock file is left)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    runs = json.loads(path.read_text())
    if not isinstance(runs, list):
        raise BenchmarkError(f"{path}: expected a list of runs")
    return runs


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would otherwise end up on the record
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def record_runs(out_dir: Path, name: str, runs: list[dict[str, Any]], plot: bool = True
                ) -> list[dict[str, Any]]:
    """Merges `runs` into the record under the lock, writes it (and the plot); returns it all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = paths(out_dir, name)
    with locked(out_dir):
        merged = merge_runs(read_runs(json_path), runs)

        def write_json(tmp: str) -> None:
            Path(tmp).write_text(json.dumps(merged, indent=2) + "\n")

        _write_atomically(json_path, write_json)
        if plot:
            plot_runs(merged, png_path, name)
    return merged


# --------------------------------------------------------------------------------------------
# The plot
# --------------------------------------------------------------------------------------------
def _loss_rank(loss: str) -> tuple[int, str]:
    return (LOSS_ORDER.index(loss) if loss in LOSS_ORDER else len(LOSS_ORDER), loss)


def group_runs(runs: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Runs grouped by env, loss and config apart from the seed; each with its legend label."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        if not run.get("curve"):
            continue
        config = {k: v for k, v in run["config"].items() if k != "seed"}
        key = (json.dumps(run["env"]), run["loss"], json.dumps(config, sort_keys=True))
        groups.setdefault(key, []).append(run)
    envs = {key[0] for key in groups}
    ordered = sorted(groups, key=lambda k: (k[0], _loss_rank(k[1]), k[2]))
    labelled = []
    for key in ordered:
        env, loss, config_text = key
        label = loss if len(envs) == 1 else f"{json.loads(env)} {loss}"
        siblings = [k for k in ordered if k[:2] == key[:2]]
        if len(siblings) > 1:  # the same loss with different settings: name the differences
            configs = [json.loads(k[2]) for k in siblings]
            mine = json.loads(config_text)
            differ = sorted({k for c in configs for k in c
                             if any(c2.get(k) != c.get(k) for c2 in configs)})
            label += " (" + ", ".join(f"{k}={mine[k]}" if k in mine else f"{k} unset"
                                      for k in differ) + ")"
        seeds = len({run["seed"] for run in groups[key]})
        labelled.append((f"{label}, {seeds} seed{'s' if seeds != 1 else ''}", groups[key]))
    return labelled


def band(runs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Env steps and the mean, min and max of eval_mean over runs: each curve interpolated onto
    the union of the runs' evaluation points within the range all of them cover."""
    curves = [(np.array([p["env_steps"] for p in r["curve"]], float),
               np.array([p["eval_mean"] for p in r["curve"]], float)) for r in runs]
    lo = max(x[0] for x, _ in curves)
    hi = min(x[-1] for x, _ in curves)
    xs = np.unique(np.concatenate([x for x, _ in curves]))
    xs = xs[(xs >= lo) & (xs <= hi)]
    if xs.size == 0:  # curves that do not overlap: plot each one's own points
        xs = np.unique(np.concatenate([x for x, _ in curves]))
    ys = np.stack([np.interp(xs, x, y) for x, y in curves])
    return xs, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def plot_runs(runs: list[dict[str, Any]], png_path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_runs(runs)
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = ["-", "--", ":", "-."]
    used: dict[str, int] = {}
    spare = iter(f"C{i}" for i in range(3, 10))
    colours = dict(LOSS_COLOURS)
    for label, members in groups:
        loss = members[0]["loss"]
        if loss not in colours:
            colours[loss] = next(spare, "black")
        style = styles[used.get(loss, 0) % len(styles)]
        used[loss] = used.get(loss, 0) + 1
        xs, mean, low, high = band(members)
        ax.plot(xs, mean, style, marker="o", markersize=3, color=colours[loss], label=label)
        ax.fill_between(xs, low, high, color=colours[loss], alpha=0.2, linewidth=0)
    thresholds = {r.get("threshold") for r in runs} - {None}
    for threshold in sorted(thresholds):
        ax.axhline(threshold, color="grey", linestyle=":", linewidth=1,
                   label=f"threshold {threshold:g}")
    envs = sorted({str(r["env"]) for r in runs})
    episodes = sorted({p["episodes"] for r in runs for p in r.get("curve", [])})
    ax.set_title(f"{', '.join(envs)}: greedy evaluation ({name})")
    ax.set_xlabel("env steps")
    per = f"{episodes[0]}" if len(episodes) == 1 else "whole"
    ax.set_ylabel(f"evaluation return (mean of {per} episodes)")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(title="mean over seeds, band: min-max over seeds", fontsize=9,
                  title_fontsize=9)
    fig.tight_layout()
    try:
        _write_atomically(Path(png_path), lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="See the module docstring for the losses' coefficients and the record's format.",
    )
    parser.add_argument("yaml", nargs="?", help="tuned example, e.g. tuned_examples/cartpole.yaml")
    parser.add_argument("--losses", nargs="+", default=None,
                        help="consistency losses (barlow simsiam none; default: all, or every "
                             "experiment of a YAML file with one per loss)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--env-steps", type=int, default=None,
                        help="env steps per run (default: the YAML's stop env steps, else its "
                             "total_env_steps)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="env steps between evaluations (default: a sixth of --env-steps)")
    parser.add_argument("--eval-episodes", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=None,
                        help="record the first env steps at which eval_mean reaches this (e.g. "
                             "475 for CartPole) and whether it stays there")
    parser.add_argument("--name", default=None, help="record name (default: the YAML file stem)")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--config", default=None,
                        help="JSON object of settings overriding the YAML's for every run")
    parser.add_argument("--keep-coefficients", action="store_true",
                        help="one-experiment YAML: keep its coefficients instead of each "
                             "method's own")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in the main process (default: the algorithm's, "
                             "num_cpus_for_main_process)")
    parser.add_argument("--save-checkpoints", default=None, metavar="DIR",
                        help="also save the algorithm at each evaluation point, under "
                             "DIR/<loss>_seed<seed>/env_steps_<point> (e.g. for "
                             "benchmarks/cartpole_end_causes.py)")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the PNG from the JSON record and exit")
    return parser


def _parse_overrides(text: str | None) -> dict[str, Any]:
    try:
        return parse_json_arg("--config", text)
    except UserError as e:
        raise BenchmarkError(str(e)) from None


def summary_table(runs: list[dict[str, Any]]) -> str:
    lines = [f"{'loss':8} {'seed':>4} {'wall s':>8} {'final':>7} {'reached':>8} {'stays':>5}  "
             "eval mean by env steps"]
    for r in runs:
        curve = "  ".join(f"{p['env_steps']}:{p['eval_mean']:.0f}" for p in r["curve"])
        lines.append(f"{r['loss']:8} {r['seed']:>4} {r['wall_s']:8.0f} "
                     f"{r['final_eval_mean']:7.1f} {str(r.get('first_env_steps_at_or_above')):>8} "
                     f"{str(r.get('stays_at_or_above_after')):>5}  {curve}")
    return "\n".join(lines)


def log(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.yaml is None and not (args.plot_only and args.name):
            raise BenchmarkError("give the tuned example YAML (or --plot-only --name NAME)")
        name = args.name or Path(args.yaml).stem
        out_dir = Path(args.out_dir)
        json_path, png_path = paths(out_dir, name)
        if args.plot_only:
            runs = read_runs(json_path)
            if not runs:
                raise BenchmarkError(f"{json_path}: no runs to plot")
            plot_runs(runs, png_path, name)
            log(f"wrote {png_path} ({len(runs)} runs)")
            return 0

        experiments = load_experiments(Path(args.yaml))
        runs = plan_runs(experiments, args.losses, args.seeds, _parse_overrides(args.config),
                         args.keep_coefficients, args.eval_episodes)
        for run in runs:  # every run's settings are checked before the first one trains
            try:
                build_config(run).validate()
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise BenchmarkError(f"{run.loss} seed {run.seed}: {e}") from None
        schedules = []  # (env steps, eval every) per run
        for run in runs:
            env_steps = args.env_steps or default_env_steps(experiments, run)
            eval_every = args.eval_every or max(1, env_steps // 6)
            if env_steps <= 0 or eval_every <= 0 or args.eval_episodes <= 0:
                raise BenchmarkError("--env-steps, --eval-every and --eval-episodes must be > 0")
            check_budget(build_config(run), env_steps)
            schedules.append((env_steps, eval_every))
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    checkpoint_dir = Path(args.save_checkpoints).resolve() if args.save_checkpoints else None
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    log(f"{len(runs)} runs ({', '.join(f'{r.loss}/{r.seed}' for r in runs)}), "
        f"{args.eval_episodes} evaluation episodes at env steps "
        f"{sorted({str(eval_targets(*s)) for s in schedules})}; record {json_path}")
    finished = []
    try:
        for run, (env_steps, eval_every) in zip(runs, schedules, strict=True):
            try:
                record = train_run(run, env_steps, eval_every, args.threshold, args.threads, log,
                                   checkpoint_dir,
                                   on_point=lambda partial: record_runs(out_dir, name, [partial]))
            except BenchmarkError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            finished.append(record)
            merged = record_runs(out_dir, name, [record])
            log(f"{run.loss} seed {run.seed}: final eval mean {record['final_eval_mean']:.1f}, "
                f"{record['wall_s']:.0f} s; {len(merged)} runs in {json_path}")
    finally:
        if started_ray:
            ray.shutdown()
    log("\n" + summary_table(finished))
    log(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
