"""The paper's figures from a run directory: every loss term, the learning rate and the returns.

    barlowzero plot ~/ray_results/breakout-sweep -o sweep.png

Reads each trial's ``result.json`` (every key of every iteration; Tune's ``progress.csv`` keeps
only the columns of the first result, so it is the fallback) and overlays the trials of a sweep,
each labelled by the config values in which it differs from the others.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PlotError", "Trial", "load_trials", "plot_run", "trial_labels"]

# (key under learners/<module>/, panel title): the losses of Figures 2-5 and the learning rate.
LEARNER_PANELS = (
    ("total_loss", "total loss"),
    ("value_prefix_loss", "value prefix (reward) loss"),
    ("value_loss", "value loss"),
    ("policy_loss", "policy loss"),
    ("consistency_loss", "consistency loss"),
    ("lr", "learning rate"),
)
RETURN_PANELS = (
    ("evaluation/env_runners/episode_return_mean", "evaluation return (greedy, whole games)"),
    ("env_runners/episode_return_mean", "training return"),
)
X_AXES = {
    "training_steps": (("training_steps_done",), "gradient steps"),
    "env_steps": (("env_runners/num_env_steps_sampled_lifetime",
                   "num_env_steps_sampled_lifetime"), "env steps"),
    "iteration": (("training_iteration",), "training iteration"),
    "time": (("time_total_s",), "seconds"),
}


class PlotError(Exception):
    """Nothing to plot (no run directory, no results, no known metrics): one line for the user."""


@dataclass
class Trial:
    """One trial: its directory name, flattened config and flattened results (one per row)."""

    name: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_result_json(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run
            result.pop("config", None)
            rows.append(flatten(result))
    return rows


def _read_progress_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [
            {k: _number(v) for k, v in row.items() if not k.startswith("config/")}
            for row in csv.DictReader(f)
        ]


def _number(text: str) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def load_trials(run_dir: str) -> list[Trial]:
    """Every trial under `run_dir` (an experiment directory, or one trial's directory)."""
    root = Path(run_dir).expanduser()
    if not root.is_dir():
        raise PlotError(f"{run_dir}: no such run directory")
    files = sorted(root.rglob("result.json")) or sorted(root.rglob("progress.csv"))
    trials = []
    for file in files:
        rows = _read_result_json(file) if file.name == "result.json" else _read_progress_csv(file)
        if not rows:
            continue
        params = file.parent / "params.json"
        config = flatten(json.loads(params.read_text())) if params.is_file() else {}
        trials.append(Trial(name=file.parent.name, config=config, rows=rows))
    if not trials:
        raise PlotError(f"{run_dir}: no trial results (result.json or progress.csv) in it")
    return trials


def trial_labels(trials: list[Trial]) -> list[str]:
    """Labels from the config values that differ between trials (else the trial names)."""
    keys = sorted({k for t in trials for k in t.config})
    differing = [
        k for k in keys
        if len({json.dumps(t.config.get(k), sort_keys=True, default=str) for t in trials}) > 1
    ]
    if len(trials) == 1 or not differing:
        return [t.name for t in trials]
    return [", ".join(f"{k}={t.config.get(k)}" for k in differing) for t in trials]


def _series(trial: Trial, x_keys: tuple[str, ...], y_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in trial.rows:
        x = next((row[k] for k in x_keys if k in row), row.get("training_iteration"))
        y = row.get(y_key)
        if isinstance(x, int | float) and isinstance(y, int | float) and math.isfinite(y):
            xs.append(float(x))
            ys.append(float(y))
    return xs, ys


def _panels(trials: list[Trial]) -> list[tuple[str, str]]:
    """(result key, title) of every known metric that some trial reports."""
    keys = {k for t in trials for row in t.rows for k in row}
    modules = sorted({k.split("/")[1] for k in keys
                      if k.startswith("learners/") and k.endswith("/total_loss")})
    panels = []
    for module in modules:
        suffix = "" if len(modules) == 1 else f" ({module})"
        panels += [(f"learners/{module}/{key}", title + suffix) for key, title in LEARNER_PANELS]
    panels += list(RETURN_PANELS)
    return [(key, title) for key, title in panels if key in keys]


def plot_run(run_dir: str, output: str | None = None, x: str = "training_steps") -> str:
    """Plots the losses, learning rate and returns of the trials under `run_dir` into a PNG.

    Args:
        run_dir: an experiment directory (several trials are overlaid) or one trial directory.
        output: the PNG path (default: RUN_DIR/training_curves.png).
        x: "training_steps" (gradient steps), "env_steps", "iteration" or "time".

    Returns:
        The path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in X_AXES:
        raise PlotError(f"unknown x axis '{x}'; choose one of {', '.join(X_AXES)}")
    trials = load_trials(run_dir)
    panels = _panels(trials)
    if not panels:
        raise PlotError(f"{run_dir}: its results hold no losses or returns to plot")
    x_keys, x_label = X_AXES[x]
    labels = trial_labels(trials)

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        for trial, label in zip(trials, labels, strict=True):
            xs, ys = _series(trial, x_keys, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    legend_rows = math.ceil(len(trials) / 3) if len(trials) > 1 else 0
    if legend_rows:
        handles, names = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 3), frameon=False)
    fig.tight_layout(rect=(0, 0.4 * legend_rows / fig.get_figheight(), 1, 1))

    output = output or os.path.join(run_dir, "training_curves.png")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output
