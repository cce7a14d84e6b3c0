"""What evaluating a checkpoint costs to load: the whole algorithm state vs the RLModule alone.

An Atari checkpoint holds its replay buffer (gigabytes of frames in a long run). `rllib evaluate`
used to restore the whole algorithm (`Algorithm.from_checkpoint`), reading that buffer;
`evaluate.load_algorithm` now builds the algorithm from the checkpoint's config and reads only the
RLModule weights. This script makes an Atari-shaped checkpoint (a tiny-network Breakout
BarlowZero, env settings of tuned_examples/breakout_cpu.yaml, the replay buffer filled with
`--frames` random 3x96x96 frames in synthetic episodes), then in a fresh process for each way:

    full   Algorithm.from_checkpoint + sync of the evaluation runner (the former load_algorithm)
    light  evaluate.load_algorithm
    cli    `rllib evaluate CKPT --episodes N` (cli.main, in that process)

loads it, plays `--episodes` greedy games, and prints the load time, the whole time (Ray start
included) and the peak RSS of the process (VmHWM: the driver, where the state is unpickled and
the evaluation env runner plays; Ray's own processes are not counted).

    python benchmarks/evaluate_loading.py --frames 30000 --episodes 2 [--repeat 2] [--out x.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
# A tiny network: the checkpoint's weight files are small, its replay buffer is not.
TINY_NETWORK = dict(
    channels=8, reduced_channels_reward=2, reduced_channels_value=2, reduced_channels_policy=2,
    resnet_fc_reward_layers=[8], resnet_fc_value_layers=[8], resnet_fc_policy_layers=[8],
    lstm_hidden_size=16, support_size=10, proj_hid=32, proj_out=32, pred_hid=16, pred_out=32,
    num_simulations=3, batch_size=4,
)
EPISODE_LENGTH = 1000  # steps per synthetic episode in the buffer


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB since it started its program.

    Linux's VmHWM; `getrusage(RUSAGE_SELF).ru_maxrss` (the fallback) also counts the memory of
    the process before its `exec`, i.e. of the parent that forked it.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_checkpoint(path: Path, frames: int, max_moves: int) -> dict:
    """Saves a tiny-network Breakout algorithm whose replay buffer holds `frames` frames."""
    import ray

    from rllib_barlowzero import BarlowZeroConfig

    (experiment,) = yaml.safe_load((ROOT / "tuned_examples/breakout_cpu.yaml").read_text())\
        .values()
    settings = {**experiment["config"], **TINY_NETWORK, "num_envs_per_env_runner": 1,
                "max_moves": max_moves, "replay_capacity": max(frames, 1000),
                "num_steps_sampled_before_learning_starts": 100}
    config = BarlowZeroConfig().environment(experiment["env"]).update_from_dict(settings)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        algo = config.build_algo()
        try:
            env = algo.eval_env_runner.env.unwrapped.envs[0]
            shape, actions = env.observation_space.shape, int(env.action_space.n)
            rng = np.random.default_rng(0)
            added, episode = 0, 0
            while added < frames:
                length = min(EPISODE_LENGTH, frames - added)
                algo.replay_buffer.add_episode_chunk(
                    episode_id=f"synthetic-{episode}",
                    observations=rng.integers(0, 256, (length + 1, *shape), dtype=np.uint8),
                    actions=rng.integers(0, actions, length),
                    rewards=np.zeros(length, np.float32),
                    mcts_policy=np.full((length, actions), 1 / actions, np.float32),
                    root_values=np.zeros(length, np.float32),
                    terminated=True, truncated=False, collected_at=0,
                )
                added, episode = added + length, episode + 1
            stored = len(algo.replay_buffer)
            algo.save_to_path(str(path))
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    state = path / "algorithm_state.pkl"
    return {"frames": frames, "frame_shape": list(shape), "buffer_steps": stored,
            "checkpoint_mib": round(size / 2**20, 1),
            "algorithm_state_mib": round(state.stat().st_size / 2**20, 1)}


def child(way: str, checkpoint: str, episodes: int) -> dict:
    """One way of loading, then `episodes` games, in this (fresh) process."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    start = time.perf_counter()
    if way == "cli":
        from rllib_barlowzero import cli

        status = cli.main(["evaluate", checkpoint, "--episodes", str(episodes), "--quiet",
                           "--num-cpus", "2"])
        return {"way": way, "exit_status": status,
                "total_s": round(time.perf_counter() - start, 2),
                "peak_rss_mib": round(peak_rss_mib(), 1)}

    import ray
    from ray.rllib.algorithms.algorithm import Algorithm

    from rllib_barlowzero import evaluate

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rss_before = peak_rss_mib()
    loading = time.perf_counter()
    if way == "full":
        algo = Algorithm.from_checkpoint(checkpoint,
                                         config=evaluate.evaluation_config(checkpoint))
        algo.eval_env_runner_group.sync_weights(
            from_worker_or_learner_group=algo.learner_group, inference_only=True
        )
    else:
        algo = evaluate.load_algorithm(checkpoint)
    load_s = time.perf_counter() - loading
    rss_loaded = peak_rss_mib()
    report = evaluate.play_games(algo, episodes, progress=False)
    algo.stop()
    ray.shutdown()
    return {"way": way, "load_s": round(load_s, 2),
            "total_s": round(time.perf_counter() - start, 2),
            "peak_rss_mib_before_load": round(rss_before, 1),
            "peak_rss_mib_after_load": round(rss_loaded, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "buffer_steps_loaded": len(algo.replay_buffer),
            "scores": report["scores"], "lengths": report["lengths"]}


def measure(way: str, checkpoint: Path, episodes: int) -> dict:
    """Runs `child` in a fresh Python process; its figures plus the wall time seen from here."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", way, str(checkpoint), "--episodes", str(episodes)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{way}: exit {done.returncode}\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["wall_s"] = round(time.perf_counter() - start, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=30_000,
                        help="frames in the checkpoint's replay buffer (default 30000)")
    parser.add_argument("--episodes", type=int, default=2, help="games played after loading")
    parser.add_argument("--max-moves", type=int, default=100, help="move cap of those games")
    parser.add_argument("--ways", default="full,light,cli", help="which ways to measure")
    parser.add_argument("--repeat", type=int, default=1, help="measure every way this often")
    parser.add_argument("--dir", help="where to put the checkpoint (default: a temporary dir)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    parser.add_argument("--child", nargs=2, metavar=("WAY", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.episodes)))
        return

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="evaluate_loading_"))
    checkpoint = workdir / "checkpoint"
    try:
        if checkpoint.exists():
            shutil.rmtree(checkpoint)
        started = time.perf_counter()
        made = make_checkpoint(checkpoint, args.frames, args.max_moves)
        made["seconds_to_make"] = round(time.perf_counter() - started, 1)
        print(f"checkpoint: {made}", flush=True)
        results: dict = {"checkpoint": made, "episodes": args.episodes, "runs": []}
        for _ in range(args.repeat):
            for way in args.ways.split(","):
                figures = measure(way, checkpoint, args.episodes)
                results["runs"].append(figures)
                print(f"{way:>5}: {figures}", flush=True)
        print()
        print(f"{'way':6}{'load s':>9}{'total s':>9}{'wall s':>9}{'peak RSS MiB':>14}"
              f"{'after load':>12}")
        for f in results["runs"]:
            load = f"{f['load_s']:.2f}" if "load_s" in f else "-"
            after = f"{f['peak_rss_mib_after_load']:.1f}" if "load_s" in f else "-"
            print(f"{f['way']:6}{load:>9}{f['total_s']:>9.2f}{f['wall_s']:>9.2f}"
                  f"{f['peak_rss_mib']:>14.1f}{after:>12}")
        runs = results["runs"]
        games = {(tuple(f["scores"]), tuple(f["lengths"])) for f in runs if "scores" in f}
        assert len(games) <= 1, f"different games: {games}"
        print("same games (scores, lengths) every way:", len(games) <= 1)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
            print(f"Wrote {args.out}")
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
