"""Evaluating a BarlowZero checkpoint: the paper's Table 1 (max / mean / min score of whole games).

    algo = load_algorithm("path/to/checkpoint_000010")
    report = play_games(algo, episodes=32)           # greedy search, whole games, raw scores
    print(format_table(report)); write_json(report, "results.json")
    record_video(algo, "game.gif")

Games are played by the algorithm's evaluation env runners (for Atari: no episodic life, raw
rewards, the `max_moves` cap), with `explore=False`: the search without root noise, the most
visited action. The games are split as evenly as possible over the runners and, within a runner,
over its envs; each env plays its share back to back from its seeded reset
(`BarlowZeroEnvRunner`), so exactly `episodes` whole games are reported whatever their lengths:
no bias towards short games. Games cut at the move cap (truncated) are counted in the report.

`load_algorithm` reads only the RLModule weights from the checkpoint (not the replay buffer or
optimizer state of the algorithm state); the algorithm is built from the checkpoint's config.
On a terminal, a progress bar over the games moves as each game ends.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core import (
    COMPONENT_ENV_TO_MODULE_CONNECTOR,
    COMPONENT_EVAL_ENV_RUNNER,
    COMPONENT_LEARNER,
    COMPONENT_LEARNER_GROUP,
    COMPONENT_MODULE_TO_ENV_CONNECTOR,
    COMPONENT_RL_MODULE,
    DEFAULT_MODULE_ID,
)
from ray.rllib.core.columns import Columns

from rllib_barlowzero.env_runner import episode_quotas

__all__ = [
    "CheckpointError",
    "EvaluateError",
    "check_checkpoint_files",
    "check_module_files",
    "find_checkpoint",
    "format_table",
    "trained_config",
    "load_algorithm",
    "play_games",
    "check_video",
    "check_video_path",
    "evaluation_config",
    "module_dir",
    "record_video",
    "summary_statistics",
    "write_json",
]

CHECKPOINT_FILES = ("rllib_checkpoint.json", "class_and_ctor_args.pkl")
VIDEO_SUFFIXES = (".gif", ".mp4")
# The RLModule inside an Algorithm checkpoint (a path relative to it, and a component name).
MODULE_COMPONENT = (
    f"{COMPONENT_LEARNER_GROUP}/{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}"
)


class EvaluateError(Exception):
    """A user mistake (bad checkpoint, env or video path): reported as one line."""


class CheckpointError(EvaluateError):
    """The path is not a BarlowZero checkpoint."""


def _checkpoint_info(path: Path) -> dict[str, Any]:
    """The checkpoint's `class_and_ctor_args.pkl`: the algorithm class and its config dict."""
    for name in CHECKPOINT_FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is not an RLlib algorithm checkpoint (no {name})")
    try:
        with open(path / "class_and_ctor_args.pkl", "rb") as f:
            return pickle.load(f)
    except Exception as e:  # unpickling runs arbitrary imports; report any failure in one line
        raise CheckpointError(
            f"{path}: damaged checkpoint: class_and_ctor_args.pkl is unreadable "
            f"(pickle: {_first_line(e)})"
        ) from None


def trained_config(checkpoint: str | Path) -> dict[str, Any]:
    """The config dict the checkpoint's algorithm was built with (its `class_and_ctor_args.pkl`)."""
    return dict(_checkpoint_info(Path(checkpoint))["ctor_args_and_kwargs"][0][0])


# Files already read whole in this process: (path, size, mtime) -> None (see `_check_file`).
_CHECKED_FILES: dict[tuple[str, int, int], None] = {}


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _check_file(root: Path, rel: str) -> None:
    """Raises a one-line `CheckpointError` if `root / rel` is missing or does not load whole
    (a `.json` file as JSON, a `.msgpack` file as msgpack, any other as a pickle)."""
    path = root / rel
    if not path.is_file():
        raise CheckpointError(f"{root}: damaged checkpoint: {rel} is missing")
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _CHECKED_FILES:
        return
    try:
        with open(path, "rb") as f:
            if path.suffix == ".json":
                kind = "JSON"
                json.load(f)
            elif path.suffix == ".msgpack":
                kind = "msgpack"
                import msgpack

                msgpack.load(f, strict_map_key=False)
            else:
                kind = "pickle"
                pickle.load(f)
    except Exception as e:  # truncated, garbled, or unpickling failed: report in one line
        raise CheckpointError(
            f"{root}: damaged checkpoint: {rel} is unreadable ({kind}: {_first_line(e)})"
        ) from None
    _CHECKED_FILES[key] = None


def _state_file(directory: Path, stem: str) -> str:
    """The name of the state file `stem`.pkl (or `stem`.msgpack, if that one is there)."""
    return f"{stem}.msgpack" if (directory / f"{stem}.msgpack").is_file() else f"{stem}.pkl"


def check_module_files(module: Path, root: Path | None = None) -> None:
    """Checks the files an RLModule directory is loaded from: `class_and_ctor_args.pkl` and
    `module_state.pkl` must load whole, `metadata.json` (if there) must be JSON.

    Raises `CheckpointError` (one line naming the file, relative to `root`) otherwise.
    """
    module, root = Path(module), Path(root if root is not None else module)
    prefix = module.relative_to(root).as_posix()

    def rel(name: str) -> str:
        return name if prefix == "." else f"{prefix}/{name}"

    if (module / "metadata.json").exists():
        _check_file(root, rel("metadata.json"))
    _check_file(root, rel("class_and_ctor_args.pkl"))
    _check_file(root, rel(_state_file(module, "module_state")))


def check_checkpoint_files(checkpoint: str | Path) -> None:
    """Checks, before anything is built, every file of the Algorithm checkpoint that evaluation
    reads: `rllib_checkpoint.json`, `class_and_ctor_args.pkl`, the RLModule directory
    (`check_module_files`) and the evaluation env runner's connector states. Not the algorithm
    state (replay buffer), the learner's optimizer state or the training env runners.

    Raises `CheckpointError` with one line naming the missing or unreadable file.
    """
    root = Path(checkpoint)
    for name in CHECKPOINT_FILES:
        _check_file(root, name)
    check_module_files(module_dir(str(root)), root)
    for component in (COMPONENT_ENV_TO_MODULE_CONNECTOR, COMPONENT_MODULE_TO_ENV_CONNECTOR):
        saved = root / COMPONENT_EVAL_ENV_RUNNER / component
        if saved.is_dir():
            _check_file(root, f"{COMPONENT_EVAL_ENV_RUNNER}/{component}/"
                        f"{_state_file(saved, 'state')}")


def find_checkpoint(path: str) -> str:
    """Resolves `path` to a BarlowZero checkpoint directory.

    `path` is a checkpoint (`algo.save_to_path`, Tune's `checkpoint_000012`), or a Tune trial
    directory, whose latest checkpoint is taken.
    """
    from rllib_barlowzero.barlowzero import BarlowZero

    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not root.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    if not (root / "rllib_checkpoint.json").exists():
        latest = sorted(root.glob("checkpoint_*"), key=lambda p: p.name)
        if not latest:
            raise CheckpointError(
                f"{path} is not a BarlowZero checkpoint (no rllib_checkpoint.json, and no "
                "checkpoint_* directories in it)"
            )
        root = latest[-1]
        print(f"Using the latest checkpoint of the trial: {root}", file=sys.stderr)
    cls = _checkpoint_info(root)["class"]
    if not (isinstance(cls, type) and issubclass(cls, BarlowZero)):
        name = getattr(cls, "__name__", repr(cls))
        raise CheckpointError(f"{root} is a {name} checkpoint, not a BarlowZero one")
    check_checkpoint_files(root)
    return str(root)


def evaluation_config(
    checkpoint: str,
    env: str | None = None,
    seed: int | None = 0,
    num_env_runners: int = 0,
    envs_per_env_runner: int = 1,
    num_simulations: int | None = None,
) -> dict[str, Any]:
    """The config dict of `checkpoint` (its `class_and_ctor_args.pkl`), resized to evaluate.

    Training env runners and learners shrink to one local process (a GPU is used only if there is
    one), reanalyze workers to none; evaluation gets `num_env_runners` runners (0: this process)
    with `envs_per_env_runner` games each, greedy search, and optionally another `env` and `seed`,
    and a search of `num_simulations` (default: the checkpoint's evaluation setting).
    """
    if num_simulations is not None and (
        isinstance(num_simulations, bool) or not isinstance(num_simulations, int)
        or num_simulations < 1
    ):
        raise EvaluateError(f"--num-simulations must be an integer >= 1, got {num_simulations!r}")
    config = trained_config(checkpoint)
    gpu = torch.cuda.is_available()
    config.update(
        num_env_runners=0,
        num_envs_per_env_runner=1,
        num_learners=0,
        num_gpus_per_learner=min(1, config.get("num_gpus_per_learner", 0)) if gpu else 0,
        num_gpus_per_env_runner=config.get("num_gpus_per_env_runner", 0) if gpu else 0,
        num_reanalyze_workers=0,
        evaluation_num_env_runners=num_env_runners,
        evaluation_config={
            **(config.get("evaluation_config") or {}),
            "explore": False,
            "num_envs_per_env_runner": envs_per_env_runner,
            "callbacks_on_episode_end": _on_episode_end,
            **({"num_simulations": num_simulations} if num_simulations is not None else {}),
        },
    )
    if env is not None:
        from rllib_barlowzero.experiments import UserError, check_env

        try:
            check_env(env)
        except UserError as e:
            raise EvaluateError(f"env {env!r} for evaluation: {e}") from None
        config["env"] = env
    if seed is not None:
        config["seed"] = seed
    return config


def module_dir(checkpoint: str) -> Path:
    """The directory of the RLModule (the learner's `default_policy`) inside an Algorithm
    checkpoint: the only part of the checkpoint evaluation reads."""
    path = Path(checkpoint) / MODULE_COMPONENT
    if not path.is_dir():
        raise CheckpointError(f"{checkpoint} holds no RLModule (no {MODULE_COMPONENT})")
    return path


def load_algorithm(
    checkpoint: str,
    env: str | None = None,
    seed: int | None = 0,
    num_env_runners: int = 0,
    envs_per_env_runner: int = 1,
    num_simulations: int | None = None,
) -> Any:
    """The algorithm of `checkpoint`, built from its config (`evaluation_config`) with the
    checkpoint's RLModule weights, ready to evaluate.

    Only the module is read from the checkpoint (and the evaluation env runner's connector states,
    a few bytes): not the replay buffer, optimizer or target model of the algorithm state, which
    for Atari hold gigabytes of frames. The learner, replay buffer and reanalyze model exist but
    are fresh and empty. The games are those `Algorithm.from_checkpoint` would play.
    """
    checkpoint = find_checkpoint(checkpoint)
    info = _checkpoint_info(Path(checkpoint))
    trained_on = info["ctor_args_and_kwargs"][0][0].get("env")
    config = evaluation_config(checkpoint, env, seed, num_env_runners, envs_per_env_runner,
                               num_simulations)
    weights = module_dir(checkpoint)
    # Built as `Algorithm.from_checkpoint` builds it: the checkpoint's class and config.
    algo = info["class"](config=config)
    try:
        # Loads the learner's module and syncs it to the training env runners.
        algo.restore_from_path(weights, component=MODULE_COMPONENT)
        _restore_eval_connectors(algo, Path(checkpoint))
    except RuntimeError as e:
        algo.stop()
        if env is None or "size mismatch" not in str(e):
            raise
        raise EvaluateError(
            f"--env {env}: its observations or actions differ from those of {trained_on}, "
            "the env the checkpoint was trained on"
        ) from None
    algo.eval_env_runner_group.sync_weights(
        from_worker_or_learner_group=algo.learner_group, inference_only=True
    )
    return algo


def _restore_eval_connectors(algo: Any, checkpoint: Path) -> None:
    """Restores the local evaluation env runner's connector states (e.g. observation filters)
    as `Algorithm.from_checkpoint` does; remote evaluation runners keep fresh ones there too."""
    runner = algo.eval_env_runner
    saved = checkpoint / COMPONENT_EVAL_ENV_RUNNER
    if runner is None:
        return
    for component in (COMPONENT_ENV_TO_MODULE_CONNECTOR, COMPONENT_MODULE_TO_ENV_CONNECTOR):
        if (saved / component).is_dir():
            runner.restore_from_path(saved / component, component=component)


class _ProgressBar:
    """A progress bar over games on stderr (a terminal only), moved at each game's end.

    A local evaluation env runner calls `add` directly; remote ones put the scores into `sink`
    (a Ray queue) that `play_games` drains into the driver's bar.
    """

    def __init__(self) -> None:
        self.total = 0  # 0: off (remote env runners import their own copy of this module)
        self.scores: list[float] = []
        self.sink: Any = None  # on a remote env runner: the driver's queue of scores

    def start(self, total: int) -> None:
        self.total, self.scores = total, []

    def finish(self) -> None:
        """Ends the bar's line if games are missing (a failed runner), and turns it off."""
        if 0 < len(self.scores) < self.total:
            print(file=sys.stderr, flush=True)
        self.start(0)

    def add(self, score: float) -> None:
        if self.sink is not None:
            self.sink.put(score)
            return
        if not self.total or len(self.scores) >= self.total:
            return
        self.scores.append(score)
        done, width = len(self.scores), 30
        filled = width * done // self.total
        print(
            f"\rgames [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}  "
            f"last {score:g}  mean {np.mean(self.scores):.1f}",
            end="\n" if done == self.total else "",
            file=sys.stderr,
            flush=True,
        )


_progress_bar = _ProgressBar()


def _on_episode_end(*, episode: Any, prev_episode_chunks: Any = (), **kwargs: Any) -> None:
    """RLlib `on_episode_end` callback of the evaluation env runners: moves the progress bar."""
    _progress_bar.add(float(episode.get_return() + sum(c.get_return() for c in
                                                       prev_episode_chunks or ())))


def _on_terminal() -> bool:
    """Whether stderr is a terminal (the progress bar is drawn only there)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _play(env_runner: Any, num_games: int, sink: Any = None) -> list[tuple[float, int, bool, list]]:
    """(score, length, truncated, moves per action) of `num_games` whole games, a fixed share
    per env.

    On a remote env runner, `sink` (a Ray queue) receives each game's score as it ends.
    """
    if num_games < 1:
        return []
    _progress_bar.sink = sink
    try:
        # One `sample` call per runner: RLlib re-seeds the envs at the start of every
        # `sample(num_episodes=...)`, so one call per game would replay the same game.
        episodes = env_runner.sample(num_episodes=num_games, explore=False)
    finally:
        _progress_bar.sink = None
    num_actions = int(env_runner.env.single_action_space.n)
    return [
        (float(e.get_return()), len(e), bool(e.is_truncated),
         np.bincount(np.asarray(e.get_actions(), dtype=np.int64), minlength=num_actions).tolist())
        for e in episodes
    ]


def _play_remote(group: Any, episodes: int, progress: bool) -> list[tuple[float, int, bool, list]]:
    """`_play` on every remote evaluation env runner, each its quota; the games in runner order.

    With `progress`, the runners send each score to a Ray queue that this process drains into the
    progress bar while they play (their `sample` calls run on a helper thread).
    """
    runners = group.num_remote_env_runners()
    sink = None
    if progress:
        from ray.util.queue import Queue

        sink = Queue(actor_options={"num_cpus": 0})

    def play(env_runner: Any) -> list[tuple[float, int, bool, list]]:
        # Remote runners are numbered 1..runners.
        return _play(env_runner, episode_quotas(episodes, runners)[env_runner.worker_index - 1],
                     sink)

    if sink is None:
        played = group.foreach_env_runner(play, local_env_runner=False)
        return [game for games in played for game in games]

    from ray.util.queue import Empty

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["played"] = group.foreach_env_runner(play, local_env_runner=False)
        except BaseException as e:  # re-raised in the calling thread
            outcome["error"] = e

    thread = threading.Thread(target=run, name="evaluate-games", daemon=True)
    try:
        thread.start()
        while thread.is_alive():
            try:
                _progress_bar.add(sink.get(timeout=0.2))
            except Empty:
                pass
        while not sink.empty():
            _progress_bar.add(sink.get_nowait())
    finally:
        sink.shutdown()
    if "error" in outcome:
        raise outcome["error"]
    return [game for games in outcome["played"] for game in games]


def play_games(
    algo: Any, episodes: int = 32, progress: bool = True, checkpoint: str | None = None
) -> dict[str, Any]:
    """Plays `episodes` whole games with the evaluation env runners; returns scores and lengths.

    The games are split as evenly as possible over the runners, and each runner's share over its
    envs; every env plays its share back to back from its seeded reset. Which games are reported
    is fixed before any is played, so long games weigh as much as short ones. `truncated` counts
    the games cut at the move cap (or a time limit) rather than ended by the game;
    `action_counts[a]` the moves that played action `a`, over all games (a greedy agent stuck on
    one action shows here). With
    `progress`, a progress bar over the games moves at each game's end, on a terminal only.
    """
    if episodes < 1:
        raise EvaluateError(f"--episodes must be >= 1, got {episodes}")
    group = algo.eval_env_runner_group
    progress = progress and _on_terminal()
    start = time.perf_counter()
    _progress_bar.start(episodes if progress else 0)
    try:
        if group.num_remote_env_runners() == 0:
            results = _play(algo.eval_env_runner, episodes)
        else:
            results = _play_remote(group, episodes, progress)
    finally:
        _progress_bar.finish()
    results = results[:episodes]
    scores = [score for score, *_ in results]
    lengths = [length for _, length, *_ in results]
    truncated = sum(cut for _, _, cut, _ in results)
    action_counts = np.sum([counts for *_, counts in results], axis=0).astype(int).tolist()
    return {
        "checkpoint": checkpoint,
        "algorithm": type(algo).__name__,
        "env": str(algo.config.env),
        "episodes": len(results),
        "seed": algo.config.seed,
        "explore": False,
        "num_simulations": algo.config.get_evaluation_config_object().num_simulations,
        "scores": scores,
        "lengths": lengths,
        "score": summary_statistics(scores),
        "length": summary_statistics(lengths),
        "truncated": truncated,
        "truncated_share": truncated / len(results) if results else 0.0,
        "action_counts": action_counts,
        "seconds": round(time.perf_counter() - start, 2),
    }


def summary_statistics(values: list[float]) -> dict[str, float]:
    """max, mean, median, min and (population) standard deviation."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "max": float(array.max()),
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "min": float(array.min()),
        "std": float(array.std()),
    }


def format_table(report: dict[str, Any]) -> str:
    """The paper's Table 1 (max / mean / min score) plus median, std, episode lengths and the
    number of games cut at the move cap."""
    lines = [
        f"{report['algorithm']} on {report['env']}: {report['episodes']} games, greedy search"
        + (f" ({report['num_simulations']} simulations)" if "num_simulations" in report else "")
        + (f", checkpoint {report['checkpoint']}" if report.get("checkpoint") else ""),
        "",
        f"{'':8}{'score':>12}{'length':>12}",
    ]
    for stat in ("max", "mean", "median", "min", "std"):
        lines.append(f"{stat:8}{report['score'][stat]:12.1f}{report['length'][stat]:12.1f}")
    if "truncated" in report:
        share = report.get("truncated_share", report["truncated"] / max(1, report["episodes"]))
        lines += [
            "",
            f"games cut at the move cap: {report['truncated']} of {report['episodes']} "
            f"({share:.0%})",
        ]
    if report.get("action_counts"):
        counts = np.asarray(report["action_counts"], dtype=np.float64)
        shares = ", ".join(f"{a}: {c / counts.sum():.0%}" for a, c in enumerate(counts))
        lines.append(f"moves per action: {shares}")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    """Writes the report (scores, lengths, statistics) as JSON."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


def _make_render_env(algo: Any, path: str, env_id: str | None = None) -> tuple[Any, Any]:
    """An env of the evaluation setup and a function returning its current RGB frame."""
    from rllib_barlowzero.env.atari import atari_env_creator, is_atari_env_id
    from rllib_barlowzero.env.gymnasium_env import make_gym_env
    from rllib_barlowzero.env.minatar_envs import is_minatar_env_id

    check_video_path(path)
    env_id = env_id or algo.config.env
    env_config = dict(algo.config.get_evaluation_config_object().env_config or {})
    if is_atari_env_id(env_id):
        env = atari_env_creator({"env_id": env_id, "max_moves": algo.config.max_moves,
                                 **env_config})
        # The full-resolution screen (the last raw frame of each agent step).
        return env, lambda: env.unwrapped.ale.getScreenRGB()
    if not (is_minatar_env_id(env_id) or env_id in gym.registry):
        raise EvaluateError(f"--video: cannot render '{env_id}' (not a gymnasium env id)")
    try:
        env = make_gym_env(env_id, {"render_mode": "rgb_array", **env_config},
                           algo.config.max_moves)
        env.reset()
        env.render()
    except gym.error.DependencyNotInstalled as e:
        raise EvaluateError(f"--video: rendering {env_id} needs a package: {e}") from None
    return env, env.render


def _can_write_mp4() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("imageio_ffmpeg", "av"))


def check_video_path(path: str) -> None:
    """Refuses a video file name that is not .gif or .mp4 (or .mp4 without an encoder)."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise EvaluateError(f"--video: {path}: use a .gif or .mp4 file name")
    if suffix == ".mp4" and not _can_write_mp4():
        raise EvaluateError("--video: MP4 needs `pip install imageio-ffmpeg`; or use a .gif")


def check_video(algo: Any, path: str, env: str | None = None) -> None:
    """Fails early (before the games) if `path` or the env cannot make a video."""
    game, _ = _make_render_env(algo, path, env)
    game.close()


def record_video(
    algo: Any,
    path: str,
    env: str | None = None,
    seed: int | None = 0,
    max_steps: int | None = None,
    fps: int = 25,
) -> tuple[str, float, int]:
    """Plays one greedy game with the algorithm's module and writes its frames to a GIF or MP4.

    Atari games show the full 210x160 screen. A GIF merges identical consecutive frames (and adds
    up their durations). Returns (path, score, steps).
    """
    import imageio

    from rllib_barlowzero.env.frame_stacking import stack_frames

    suffix = Path(path).suffix.lower()
    game, render = _make_render_env(algo, path, env)
    module = algo.get_module()
    n = algo.config.stacked_observations
    try:
        obs, _ = game.reset(seed=seed)
        history = deque([obs] * n, maxlen=n)
        frames = [np.asarray(render())]
        score, steps, done = 0.0, 0, False
        while not done and (max_steps is None or steps < max_steps):
            stacked = stack_frames(np.stack(history), n - 1, n)
            with torch.no_grad():
                out = module.forward_inference({Columns.OBS: torch.as_tensor(stacked[None])})
            action = int(np.asarray(out[Columns.ACTIONS]).reshape(-1)[0])
            obs, reward, terminated, truncated, _ = game.step(action)
            history.append(obs)
            frames.append(np.asarray(render()))
            score += float(reward)
            steps += 1
            done = terminated or truncated
    finally:
        game.close()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        if suffix == ".gif":
            imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
        else:
            imageio.mimsave(path, frames, fps=fps)
    except (ImportError, ValueError, RuntimeError) as e:
        hint = " (MP4 needs `pip install imageio-ffmpeg`; or use .gif)" if suffix == ".mp4" else ""
        raise EvaluateError(f"--video: cannot write {path}: {e}{hint}") from None
    return path, score, steps

