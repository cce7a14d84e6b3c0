"""The ``rllib`` / ``barlowzero`` command (one program, two names).

    rllib train file tuned_examples/breakout.yaml [--storage-path DIR] [--resume]
                     [--config '{"lr": 0.02}'] [--stop '{"training_iteration": 5}']
    rllib evaluate CHECKPOINT --episodes 32 [--env ID] [--out results.json] [--video game.gif]
    barlowzero plot RUN_DIR [-o fig.png]
    barlowzero serve CHECKPOINT [--port 8000]

``train file`` reads RLlib's classic YAML experiments (``{name: {run, env, stop, config,
checkpoint_config, num_samples, storage_path, max_failures}}``; ``grid_search``, ``choice``,
``uniform``, ``loguniform``, ``randint`` allowed inside ``config``) and runs them with
``tune.Tuner`` on a local Ray sized to this machine, or on ``--address``. Mistakes a user makes
(a missing or malformed file, an unknown key or algorithm, a bad value, a wrong checkpoint) end
the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import numbers
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray
from ray import tune

from rllib_barlowzero import evaluate, plot
from rllib_barlowzero.experiments import (
    Experiment,
    UserError,
    _QuietRLlib,
    algorithm_class,
    config_variants,
    load_experiments,
    parse_json_arg,
    to_tune_search_spaces,
)
from rllib_barlowzero.tensorboard import TBXLoggerCallback

# --------------------------------------------------------------------------------------------
# Running experiments with Tune
# --------------------------------------------------------------------------------------------


def init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None,
             dashboard: bool = False) -> None:
    """Starts a local Ray sized to this machine, or connects to the cluster at `address`."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus,
                 include_dashboard=dashboard, logging_level=logging.WARNING)


def check_resources(experiment: Experiment, local: bool) -> None:
    """Refuses (locally) or warns about (cluster) a trial bigger than the whole Ray cluster,
    which Tune would otherwise leave PENDING forever."""
    algo_cls = algorithm_class(experiment.run, experiment.name)
    if not hasattr(algo_cls, "default_resource_request"):
        return
    variant = next(config_variants(experiment.config))
    with _QuietRLlib():
        config = algo_cls.get_default_config().update_from_dict(variant)
        needed = algo_cls.default_resource_request(config).required_resources
    available = ray.cluster_resources()
    short = {k: v for k, v in needed.items() if v > available.get(k, 0) + 1e-9}
    if not short:
        return

    def fmt(resources: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU"))

    message = (
        f"experiment '{experiment.name}' needs {fmt(needed)} per trial but this Ray cluster has "
        f"{fmt({k: available.get(k, 0) for k in ('CPU', 'GPU')})}: lower num_env_runners, "
        "evaluation_num_env_runners or num_gpus_* in its config, or pass --address"
    )
    if local:
        raise UserError(message)
    print(f"warning: {message}", file=sys.stderr)


# The progress table of `train file`, the classic `rllib train` columns: result key (nested keys
# joined by "/") -> (header, format of the value).
PROGRESS_COLUMNS: dict[str, tuple[str, str]] = {
    "training_iteration": ("iter", "d"),
    "num_env_steps_sampled_lifetime": ("env steps", "d"),
    "training_steps_done": ("train steps", "d"),
    "env_runners/episode_return_mean": ("return", ".1f"),
    "evaluation/env_runners/episode_return_mean": ("eval return", ".1f"),
    "learners/default_policy/total_loss": ("total loss", ".4g"),
    "env_steps_per_s": ("env steps/s", ".1f"),
    "learner_idle_share": ("learner idle", ".0%"),
}
# Status order of the rows, and the most rows shown while trials run (all of them at the end).
TRIAL_STATUS_ORDER = ("RUNNING", "PAUSED", "PENDING", "TERMINATED", "ERROR")
MAX_PROGRESS_ROWS = 20


def result_value(result: dict[str, Any], key: str) -> Any:
    """`result[key]`, a nested key given as "a/b/c" (or already flat); None if absent."""
    if key in result:
        return result[key]
    value: Any = result
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def format_cell(value: Any, spec: str) -> str:
    """A metric value for the progress table: blank when missing or not a number."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        return ""
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if spec == "d":
        return str(int(round(value)))
    return format(value, spec)


def render_table(header: list[str], rows: list[list[str]], right: list[bool]) -> str:
    """A text table in psql style; `right` tells which columns are right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ) + " |"

    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    return "\n".join([rule, line(header), rule.replace("+", "|", 1)[:-1] + "|",
                      *(line(r) for r in rows), rule])


class ProgressTable(tune.ProgressReporter):
    """Tune's progress output for `train file`: a status block and one row per trial with the
    classic `rllib train` columns (`PROGRESS_COLUMNS`) and the trial's searched parameters.

    A cell stays blank until its trial reports that metric (e.g. the loss before learning
    starts, the evaluation return between evaluations), so the columns never move. The table is
    printed when a trial changes (status or iteration) at most every `min_interval_s` seconds,
    at least every `max_interval_s` seconds, and once more at the end.
    """

    def __init__(
        self,
        columns: dict[str, tuple[str, str]] | None = None,
        min_interval_s: float = 10.0,
        max_interval_s: float = 300.0,
    ) -> None:
        self.columns = dict(columns or PROGRESS_COLUMNS)
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self._start = time.time()
        self._total_samples: int | None = None
        self._last_time = -math.inf
        self._last_state: tuple = ()

    def setup(self, start_time: float | None = None, total_samples: int | None = None,
              **kwargs: Any) -> None:
        if start_time is not None:
            self._start = start_time
        self._total_samples = total_samples

    @staticmethod
    def _state(trials: list[Any]) -> tuple:
        return tuple((t.trial_id, t.status, (t.last_result or {}).get("training_iteration"))
                     for t in trials)

    def should_report(self, trials: list[Any], done: bool = False) -> bool:
        waited = time.time() - self._last_time
        changed = self._state(trials) != self._last_state
        return done or (changed and waited >= self.min_interval_s) or (
            waited >= self.max_interval_s)

    def report(self, trials: list[Any], done: bool, *sys_info: str) -> None:
        self._last_time, self._last_state = time.time(), self._state(trials)
        print(self.format(trials, done, *sys_info), flush=True)

    def format(self, trials: list[Any], done: bool = False, *sys_info: str) -> str:
        """The status block and the table (all rows when `done`)."""
        now = time.time()
        running = time.strftime("%H:%M:%S", time.gmtime(max(0.0, now - self._start)))
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        total = f"/{self._total_samples}" if self._total_samples else ""
        lines = [
            f"== Status == {time.strftime('%Y-%m-%d %H:%M:%S')} (running for {running})",
            *(info for info in sys_info if info),
            f"Trials: {len(trials)}{total} ("
            + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + ")",
        ]
        if not trials:
            return "\n".join(lines)
        order = {status: i for i, status in enumerate(TRIAL_STATUS_ORDER)}
        shown = sorted(trials, key=lambda t: order.get(t.status, len(order)))
        hidden = 0 if done else max(0, len(shown) - MAX_PROGRESS_ROWS)
        shown = shown[: len(shown) - hidden]
        params = sorted({key for t in trials for key in (t.evaluated_params or {})})
        header = ["trial", "status", *params, *(h for h, _ in self.columns.values())]
        right = [False, False, *[True] * len(params), *[True] * len(self.columns)]
        rows = []
        for trial in shown:
            result = trial.last_result or {}
            rows.append([
                str(trial), trial.status,
                *(_param_cell((trial.evaluated_params or {}).get(p)) for p in params),
                *(format_cell(result_value(result, key), spec)
                  for key, (_, spec) in self.columns.items()),
            ])
        lines.append(render_table(header, rows, right))
        if hidden:
            lines.append(f"... and {hidden} more trial(s)")
        for trial in trials:
            error_file = getattr(trial, "error_file", None)
            if trial.status == "ERROR" and error_file:
                lines.append(f"{trial} failed: see {error_file}")
        return "\n".join(lines)


def _param_cell(value: Any) -> str:
    if value is None:
        return ""
    text = format(value, "g") if isinstance(value, float) else str(value)
    return text if len(text) <= 20 else text[:17] + "..."


@contextlib.contextmanager
def classic_tune_output() -> Iterator[None]:
    """Tune's classic output engine for the duration (the new one ignores a progress reporter)."""
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous


class RaiseStop(tune.Callback):
    """Extends the stop conditions of restored trials (Tune keeps them in the experiment state)."""

    def __init__(self, stop: dict[str, Any]) -> None:
        self.stop = stop

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        for trial in trials:
            trial.stopping_criterion.update(self.stop)


def run_experiment(experiment: Experiment, resume: bool = False,
                   stop_override: dict[str, Any] | None = None, verbose: int = 1) -> list[Any]:
    """Runs (or with `resume`, restores and continues) one experiment; returns Tune's results."""
    storage_path = os.path.abspath(
        os.path.expanduser(experiment.storage_path or "~/ray_results")
    )
    experiment_dir = os.path.join(storage_path, experiment.name)
    if resume and tune.Tuner.can_restore(experiment_dir):
        print(f"Resuming {experiment_dir} from its trials' latest checkpoints", flush=True)
        resume_config = tune.ResumeConfig(
            unfinished=tune.ResumeConfig.ResumeType.RESUME,
            errored=tune.ResumeConfig.ResumeType.RESUME,
            # With a new stop condition, finished trials go on from their last checkpoint too.
            finished=tune.ResumeConfig.ResumeType.RESUME if stop_override
            else tune.ResumeConfig.ResumeType.SKIP,
        )
        tuner = tune.Tuner.restore(experiment_dir,
                                   trainable=algorithm_class(experiment.run, experiment.name),
                                   _resume_config=resume_config)
        run_config = tuner._local_tuner.get_run_config()
        run_config.progress_reporter = ProgressTable()
        if stop_override:
            # Trials keep their stop conditions in the experiment state; raise them.
            run_config.callbacks.append(RaiseStop(stop_override))
    else:
        if resume:
            print(f"Nothing to resume at {experiment_dir}; starting the experiment", flush=True)
        tuner = tune.Tuner(
            algorithm_class(experiment.run, experiment.name),
            param_space=to_tune_search_spaces(experiment.config, "config", experiment.name),
            tune_config=tune.TuneConfig(num_samples=experiment.num_samples),
            run_config=tune.RunConfig(
                name=experiment.name,
                storage_path=storage_path,
                stop=experiment.stop or None,
                checkpoint_config=tune.CheckpointConfig(**experiment.checkpoint_config),
                failure_config=tune.FailureConfig(max_failures=experiment.max_failures),
                callbacks=[TBXLoggerCallback()],
                progress_reporter=ProgressTable(),
                verbose=verbose,
            ),
        )
    with classic_tune_output():
        return list(tuner.fit())


def summarize(experiment: Experiment, results: list[Any]) -> tuple[int, int]:
    """Prints one line per trial (iteration, returns, checkpoint).

    Returns the numbers of failed and of unfinished (interrupted) trials.
    """
    errors = unfinished = 0
    print(f"\n{experiment.name}: {len(results)} trial(s)")
    for result in results:
        metrics = result.metrics or {}
        evaluation = metrics.get("evaluation", {}).get("env_runners", {})
        training = metrics.get("env_runners", {})
        parts = [os.path.basename(result.path)]
        if result.error:
            errors += 1
            parts.append(f"ERROR: {str(result.error).splitlines()[0][:200]}")
        elif not metrics.get("done"):
            unfinished += 1
            parts.append("unfinished")
        parts.append(f"iteration {metrics.get('training_iteration', 0)}")
        if "episode_return_mean" in training:
            parts.append(f"return {training['episode_return_mean']:.1f}")
        if "episode_return_mean" in evaluation:
            parts.append(f"evaluation return {evaluation['episode_return_mean']:.1f}")
        if result.checkpoint is not None:
            parts.append(f"checkpoint {result.checkpoint.path}")
        print("  " + " | ".join(parts))
    return errors, unfinished


def cmd_train(args: argparse.Namespace) -> int:
    """`train file X.yaml`: checks every experiment, then runs them one after the other."""
    config_override = parse_json_arg("--config", args.config)
    stop_override = parse_json_arg("--stop", args.stop)
    experiments = load_experiments(args.file, config_override, stop_override, args.storage_path,
                                   only=args.experiment)
    for experiment in experiments:
        if args.num_samples is not None:
            experiment.num_samples = args.num_samples
        if args.checkpoint_freq is not None:
            experiment.checkpoint_config["checkpoint_frequency"] = args.checkpoint_freq
    init_ray(args.address, args.num_cpus, args.num_gpus, args.dashboard)
    for experiment in experiments:
        check_resources(experiment, local=args.address is None)
    errors = unfinished = 0
    for experiment in experiments:
        results = run_experiment(experiment, resume=args.resume, stop_override=stop_override,
                                 verbose=args.verbose)
        failed, interrupted = summarize(experiment, results)
        errors, unfinished = errors + failed, unfinished + interrupted
        if interrupted:
            break
    if unfinished:
        resume = f"{args.prog} train file {args.file} --resume"
        if args.storage_path:
            resume += f" --storage-path {args.storage_path}"
        print(f"interrupted: {unfinished} trial(s) unfinished; continue them with: {resume}",
              file=sys.stderr)
        return 130
    if errors:
        print(f"error: {errors} trial(s) failed; see error.txt in their trial directories",
              file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# evaluate, plot, serve
# --------------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`evaluate CHECKPOINT`: Table 1 over --episodes games, optional JSON and video."""
    if args.episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {args.episodes}")
    if args.video:
        evaluate.check_video_path(args.video)
    checkpoint = evaluate.find_checkpoint(args.checkpoint)
    init_ray(args.address, args.num_cpus, args.num_gpus)
    algo = evaluate.load_algorithm(
        checkpoint,
        env=args.env,
        seed=args.seed,
        num_env_runners=args.num_env_runners,
        envs_per_env_runner=args.envs_per_env_runner,
        num_simulations=args.num_simulations,
    )
    try:
        if args.video:
            evaluate.check_video(algo, args.video, env=args.env)
        report = evaluate.play_games(algo, args.episodes, progress=not args.quiet,
                                     checkpoint=checkpoint)
        print(evaluate.format_table(report))
        if args.out:
            evaluate.write_json(report, args.out)
            print(f"Wrote {args.out}")
        if args.video:
            path, score, steps = evaluate.record_video(
                algo, args.video, env=args.env, seed=args.seed, max_steps=args.video_max_steps
            )
            print(f"Wrote {path} (one game: score {score:g}, {steps} steps)")
    finally:
        algo.stop()
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """`plot RUN_DIR`: the losses and returns of a run (or a sweep) into a PNG."""
    path = plot.plot_run(args.run_dir, args.output, x=args.x)
    print(f"Wrote {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`serve CHECKPOINT`: Ray Serve HTTP endpoint (rllib_barlowzero.serve) until Ctrl-C."""
    from rllib_barlowzero import serve

    try:
        checkpoint = evaluate.find_checkpoint(args.checkpoint)
    except evaluate.CheckpointError as e:
        try:  # serve also takes an RLModule directory (module.save_to_path)
            checkpoint = str(serve.resolve_module_dir(args.checkpoint))
        except FileNotFoundError:
            raise e from None
    serve.serve_checkpoint(
        checkpoint, port=args.port, host=args.host, blocking=True,
        num_frames=args.num_frames, max_sessions=args.max_sessions,
        session_idle_timeout_s=args.session_idle_timeout or None,
    )
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `rllib` / `barlowzero` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="BarlowZero (EfficientZero with a Barlow Twins consistency loss) on RLlib: "
        "train YAML experiments with Tune, evaluate checkpoints, plot runs, serve agents.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_ray_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", help="address of a running Ray cluster (default: start a "
                       "local one sized to this machine)")
        p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
        p.add_argument("--num-gpus", type=int, help="GPUs of the local Ray (default: all)")

    train = commands.add_parser("train", help="train the experiments of a YAML file with Tune")
    train_kinds = train.add_subparsers(dest="kind", required=True, metavar="file")
    train_file = train_kinds.add_parser(
        "file", help="run the experiments of an RLlib YAML file",
        description="Runs every experiment of an RLlib YAML file with tune.Tuner.",
    )
    train_file.add_argument("file", help="YAML file: {name: {run, env, stop, config, ...}}")
    train_file.add_argument("--storage-path", help="where runs go (default: the YAML's "
                            "storage_path, else ~/ray_results)")
    train_file.add_argument("--resume", action="store_true",
                            help="continue the experiment of the same name in the storage path "
                            "from its trials' latest checkpoints (with --stop: also finished "
                            "trials, up to the new stop)")
    train_file.add_argument("--config", help="JSON merged into every experiment's config, "
                            "e.g. '{\"lr\": 0.02}'")
    train_file.add_argument("--stop", help="JSON merged into every experiment's stop, "
                            "e.g. '{\"training_iteration\": 5}'")
    train_file.add_argument("-e", "--experiment", action="append", metavar="NAME",
                            help="run only this experiment of the file (repeatable)")
    train_file.add_argument("--num-samples", type=int, help="trials per point of the search")
    train_file.add_argument("--checkpoint-freq", type=int,
                            help="checkpoint every N training iterations")
    train_file.add_argument("-v", "--verbose", type=int, default=1, choices=(0, 1, 2),
                            help="Tune's output: 0 silent, 1 progress table (default: iteration, "
                            "env and training steps, returns, loss, env steps/s, learner idle "
                            "share), 2 also every result")
    train_file.add_argument("--dashboard", action="store_true", help="start Ray's dashboard")
    add_ray_args(train_file)
    train_file.set_defaults(func=cmd_train)

    ev = commands.add_parser("evaluate", help="play full games with a checkpoint (Table 1)",
                             description="Loads the network of a BarlowZero checkpoint (not "
                             "its replay buffer) and plays whole games with greedy search; prints "
                             "max / mean / median / min / std and the games cut at the move cap.")
    ev.add_argument("checkpoint", help="checkpoint directory (or a trial directory: its latest)")
    ev.add_argument("--episodes", type=int, default=32, help="games to play (default: 32)")
    ev.add_argument("--env", help="play this env id instead of the checkpoint's")
    ev.add_argument("--out", help="write the scores to this JSON file")
    ev.add_argument("--video", help="record one game to this .gif or .mp4 file")
    ev.add_argument("--video-max-steps", type=int, default=None,
                    help="cap the recorded game at this many steps")
    ev.add_argument("--seed", type=int, default=0, help="seed of the evaluation envs")
    ev.add_argument("--num-env-runners", type=int, default=0,
                    help="parallel evaluation env runners (default: 0, play in this process)")
    ev.add_argument("--envs-per-env-runner", type=int, default=1,
                    help="games played at once per env runner (default 1; more is faster; "
                    "each env plays a fixed share of the games, so long ones are not dropped)")
    ev.add_argument("--num-simulations", type=int, default=None,
                    help="simulations of the evaluation search (default: the checkpoint's; "
                    "a deeper search can show what a model trained with a short one knows)")
    ev.add_argument("--quiet", action="store_true",
                    help="no progress bar (it is drawn on a terminal only)")
    add_ray_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    pl = commands.add_parser("plot", help="plot the losses and returns of a run",
                             description="Plots every loss, the learning rate and the returns of "
                             "the trials under RUN_DIR (one trial or a sweep, overlaid).")
    pl.add_argument("run_dir", help="an experiment or trial directory")
    pl.add_argument("-o", "--output", help="PNG file (default: RUN_DIR/training_curves.png)")
    pl.add_argument("--x", default="training_steps",
                    choices=("training_steps", "env_steps", "iteration", "time"),
                    help="x axis (default: gradient steps)")
    pl.set_defaults(func=cmd_plot)

    sv = commands.add_parser("serve", help="serve a checkpoint over HTTP with Ray Serve")
    sv.add_argument("checkpoint", help="checkpoint directory (or a trial directory: its latest)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--num-frames", type=int, default=None,
                    help="frames per stacked observation; needed for sessions when serving an "
                         "RLModule directory (an Algorithm checkpoint records it)")
    sv.add_argument("--max-sessions", type=int, default=1000,
                    help="sessions kept (least recently used evicted); 0: sessions off")
    sv.add_argument("--session-idle-timeout", type=float, default=600.0,
                    help="seconds before an idle session is dropped; 0: never")
    sv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rllib` and `barlowzero` console scripts."""
    prog = os.path.basename(sys.argv[0]) if argv is None else "barlowzero"
    if prog not in ("rllib", "barlowzero"):
        prog = "barlowzero"
    args = build_parser(prog).parse_args(argv)
    args.prog = prog
    try:
        return int(args.func(args) or 0)
    except (UserError, evaluate.EvaluateError, plot.PlotError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
