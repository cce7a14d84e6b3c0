"""Throughput of the Atari pipeline: self-play, reanalyze, learner, and the learner's idle share.

Builds BarlowZero from a tuned example (default: the paper's `tuned_examples/breakout.yaml`) with
a local env runner, fills the replay buffer, then times each stage on its own and the pipelined
training loop (reanalyze of batch i+1 overlapping the update of batch i):

    python benchmarks/bench_atari.py                                   # the paper's network
    python benchmarks/bench_atari.py --yaml tuned_examples/breakout_cpu.yaml
    python benchmarks/bench_atari.py --yaml tuned_examples/breakout_cpu.yaml \
        --reanalyze-workers 0 1 2      # the pipelined loop with 0 (driver thread), 1, 2 actors

With `--reanalyze-workers`, each count gets its own algorithm (the same replay buffer copied in,
`reanalyze_queue_size` = max(2, 2N) for every N so the counts differ only in who makes the
batches) and the pipelined loop is timed again: learner steps/s and the learner's idle share.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import yaml
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.barlowzero import add_episode_chunk

ROOT = Path(__file__).resolve().parents[1]


def build(yaml_path: Path, num_envs: int | None, device: str, **training) -> object:
    (experiment,) = yaml.safe_load(yaml_path.read_text()).values()
    config = BarlowZeroConfig().environment(experiment["env"])
    config.update_from_dict(experiment["config"])
    config.env_runners(num_env_runners=0)
    if num_envs:
        config.env_runners(num_envs_per_env_runner=num_envs)
    gpus = 1 if device == "cuda" else 0
    config.learners(num_learners=0, num_gpus_per_learner=gpus)
    config.env_runners(num_gpus_per_env_runner=0)
    config.evaluation(evaluation_interval=None, evaluation_num_env_runners=0)
    config.training(**training)
    return config.build_algo()


def self_play_round(algo: Any) -> list:
    """One round of search-driven self-play: 4 steps in each env; returns the episode chunks."""
    return algo.env_runner.sample(num_timesteps=algo.config.num_envs_per_env_runner * 4,
                                  explore=True)


def fill_replay_buffer(algo: Any, min_env_steps: int, verbose: bool = False
                       ) -> list[tuple[float, int]]:
    """Self-play rounds into the replay buffer until it holds `min_env_steps` and a batch;
    returns each round's (seconds, env steps)."""
    cfg = algo.config
    collected, rounds = 0, []
    while collected < min_env_steps or len(algo.replay_buffer) < cfg.batch_size:
        start = time.perf_counter()
        episodes = self_play_round(algo)
        rounds.append((time.perf_counter() - start, sum(len(e) for e in episodes)))
        for episode in episodes:
            collected += add_episode_chunk(algo.replay_buffer, episode, 0)
        if verbose:
            print(f"  warm-up: {collected} env steps, {len(algo.replay_buffer)} sampleable",
                  flush=True)
    return rounds


def reanalyze_and_update(algo: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    """Two stages to time on their own: `reanalyze()` makes a training batch from the replay
    buffer; `update()` runs one learner step on the last batch made (call reanalyze first)."""
    cfg = algo.config
    batches: list[dict] = []

    def reanalyze() -> None:
        windows = algo.replay_buffer.sample(cfg.batch_size)
        batches.append(algo.reanalyzer.make_batch(windows, 0, len(batches)))

    def update() -> None:
        algo.learner_group.update(
            batch=MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(batches[-1])},
                                  env_steps=cfg.batch_size),
            timesteps={},
        )

    return reanalyze, update


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--yaml", default=str(ROOT / "tuned_examples/breakout.yaml"))
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--reanalyze-workers", type=int, nargs="*", default=[],
                        help="also time the pipelined loop with these numbers of Ray actors")
    parser.add_argument("--out", default=None, help="write the figures as JSON")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    algo = build(Path(args.yaml), args.num_envs, args.device)
    cfg = algo.config
    print(f"{Path(args.yaml).name}: channels={cfg.channels} sims={cfg.num_simulations} "
          f"batch={cfg.batch_size} envs={cfg.num_envs_per_env_runner} device={args.device}",
          flush=True)

    # Self-play: env steps per second of the search-driven env runner.
    sample_times = fill_replay_buffer(algo, args.warmup_steps, verbose=True)
    env_steps_per_s = sum(n for _, n in sample_times[1:]) / sum(t for t, _ in sample_times[1:])

    # Reanalyze alone (sample + target values + fresh searches for the batch), then the learner
    # alone (one gradient step on the last batch made).
    reanalyze, update = reanalyze_and_update(algo)
    reanalyze_s = statistics.median(timed(reanalyze, args.repeats))
    update()  # first call builds optimizer state
    update_s = statistics.median(timed(update, args.repeats))

    # The pipelined loop, as training_step runs it.
    start = time.perf_counter()
    algo._train(args.repeats * 2)
    pipelined_s = (time.perf_counter() - start) / (args.repeats * 2)
    idle = algo.metrics.peek("learner_idle_share")

    figures = {
        "self_play_env_steps_per_s": env_steps_per_s,
        "search_s_per_env_step_batch": cfg.num_envs_per_env_runner / env_steps_per_s,
        "reanalyze_batches_per_s": 1 / reanalyze_s,
        "learner_steps_per_s_alone": 1 / update_s,
        "pipelined_training_steps_per_s": 1 / pipelined_s,
        "learner_idle_share": idle,
        "replay_bytes_per_step": algo.replay_buffer.bytes_per_step(),
    }
    print(f"\n{'figure':34} value")
    for key, value in figures.items():
        print(f"{key:34} {value:,.3f}")
    buffer_state = algo.replay_buffer.get_state()
    algo.stop()

    workers = {}
    for n in args.reanalyze_workers:
        queue = max(2, 2 * n)
        other = build(Path(args.yaml), args.num_envs, args.device, num_reanalyze_workers=n,
                      reanalyze_queue_size=queue, num_cpus_per_reanalyze_worker=0.5)
        other.replay_buffer.set_state(buffer_state)
        other._train(queue)  # warm-up: workers started, weights loaded
        other._train(args.repeats * 2)
        workers[n] = {
            "reanalyze_queue_size": queue,
            "learner_steps_per_s": other.metrics.peek("learner_steps_per_s"),
            "learner_idle_share": other.metrics.peek("learner_idle_share"),
            "reanalyze_batch_s": other.metrics.peek(("timers", "reanalyze_batch_s")),
            "learner_update_s": other.metrics.peek(("timers", "learner_update_s")),
        }
        other.stop()
        print(f"reanalyze workers {n}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in workers[n].items()), flush=True)
    if workers:
        figures["pipelined_by_reanalyze_workers"] = workers
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
