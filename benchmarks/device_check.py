"""Device check: the figures that size a BarlowZero run on one GPU, in one time-boxed script.

    python benchmarks/device_check.py                      # GPU machine (breakout.yaml network)
    python benchmarks/device_check.py --no-mixed-precision
    python benchmarks/device_check.py --cpu-smoke --out /tmp/check   # same code path, tiny, CPU

Writes `device_check.json` into `--out DIR` (default: `$OUT`, else the current folder) after every
stage, and prints each figure as it is measured. Figures:

1. Model floors (`model_floors.<roots>`): for one search at 1, 8 and 64 roots, the time of its
   model calls (one `initial_inference` and `num_simulations` `recurrent_inference` calls on
   [roots] batches), next to the full `search(network, obs, mcts_config, noise=None, seed=0)`.
   `model_calls_s` times those calls inside the timed search (each call wrapped and followed by
   a device sync; the search copies every result to the host before the next call anyway), so
   it is part of `search_s` by construction and `search_overhead_s` = search_s - model_calls_s
   is the search's own cost (tree, gathers, host copies); `model_calls_alone_s` runs the same
   calls outside any search. Medians over rounds after one warm-up round. Then one learner
   update alone on a prepared reanalyze batch (`learner_update_s`, at the config's batch size:
   64 on the GPU), and one reanalyze batch made alone on the driver (`reanalyze_make_batch_s`).
2. Self-play (`self_play`): env steps/s of the search-driven env runners, sampled exactly as
   `BarlowZero.training_step` does (`synchronous_parallel_sample` of rollout_fragment_length x
   envs x runners steps); the first call (warm-up) is not timed. These episodes fill the replay
   buffer for the later stages.
3. Reanalyze (`reanalyze`): for 0, 4 and 8 reanalyze workers (smoke: 0, 1, 2), an algorithm with
   that many workers gets the filled buffer (`replay_buffer.set_state`), runs `_train` twice to
   warm up (worker start, first searches), then `_train(n)` with n sized to the stage's time box;
   `("reanalyze", "batches_per_s")`, `learner_steps_per_s` and `learner_idle_share` are read from
   `algo.metrics` after that call (the pipelined pace and idle share of the training loop, and the
   reanalyze capacity: workers / mean seconds per batch).
4. Learner (`learner`): the best pipelined learner steps/s over the worker counts, and its idle
   share.
5. Projection (`projected`): wall time of `tuned_examples/breakout.yaml` (its `total_env_steps`
   and `training_steps`) as env steps / self-play rate + training steps / best learner rate,
   since `training_step` samples, then trains, one after the other. In the smoke these are CPU
   figures of a tiny network: the line only exercises the code.

Every stage is guarded: a failing stage records its error in `errors` and the rest still run.
The stages share one wall budget (GPU 420 s, smoke 150 s, counted from the end of the imports;
`--budget-s`), each is time-boxed, and a watchdog ends the process 20 s after the budget (the
JSON, rewritten after every stage, already holds every finished figure). Exit status: 0 when
every stage ran, 1 when some failed (see `errors`), 3 from the watchdog.

GPU configuration: breakout.yaml as is (network, 50 simulations, batch 64, 2 env runners x 8
envs with 0.25 GPU each), a local learner on the GPU (`num_learners=0, num_gpus_per_learner=1`),
bf16 `mixed_precision` unless `--no-mixed-precision`, reanalyze workers with 1 CPU and 0.1 GPU
each, `ray.init(num_cpus=os.cpu_count(), num_gpus=1)`.

Env-runner GPU placement (RLlib 2.60, `ray/rllib/env/single_agent_env_runner.py`): the runner
sets `self._device = get_device(config, 0 if not self.worker_index else
config.num_gpus_per_env_runner)`, `make_module` moves the module there, and the env-to-module
connector's `NumpyToTensor` is built with the same device. The local env runner (worker_index 0,
the one that samples when `num_env_runners=0`) therefore always acts on the CPU, whatever
`num_gpus_per_env_runner` says. Only remote env runners (`num_env_runners >= 1`) with
`num_gpus_per_env_runner > 0` act on the GPU (`get_device` returns Ray's GPU inside the actor), so
the GPU check samples with breakout.yaml's two remote runners. The algorithms that only measure
reanalyze use a local runner with one env (it never samples there), which keeps their Ray GPU
demand to the workers' shares.

`--cpu-smoke`: the same stages with a tiny network (16 channels, support 10, LSTM 32), 4
simulations, batch 16, Breakout through the same ALE pipeline on a local env runner with 2 envs,
workers 0, 1, 2 with 0.5 CPU each, `ray.init(num_cpus=2)`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import TIMERS

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.barlowzero import add_episode_chunk
from rllib_barlowzero.experiments import load_yaml
from rllib_barlowzero.torch.search import search

STARTED = time.monotonic()
ROOT = Path(__file__).resolve().parents[1]
BREAKOUT_YAML = ROOT / "tuned_examples/breakout.yaml"
JSON_NAME = "device_check.json"

TINY_NETWORK: dict[str, Any] = dict(
    channels=16, blocks=1, reduced_channels_reward=4, reduced_channels_value=4,
    reduced_channels_policy=4, resnet_fc_reward_layers=[16], resnet_fc_value_layers=[16],
    resnet_fc_policy_layers=[16], lstm_hidden_size=32, support_size=10, proj_hid=32, proj_out=32,
    pred_hid=16, pred_out=32,
)
NETWORK_KEYS = (
    "channels", "blocks", "reduced_channels_reward", "reduced_channels_value",
    "reduced_channels_policy", "resnet_fc_reward_layers", "resnet_fc_value_layers",
    "resnet_fc_policy_layers", "lstm_hidden_size", "support_size", "proj_hid", "proj_out",
    "pred_hid", "pred_out", "consistency_loss",
)


@dataclass
class Plan:
    """What the check runs: the GPU configuration or the CPU smoke."""

    mode: str  # "gpu" or "cpu-smoke"
    use_gpu: bool
    mixed_precision: bool
    budget_s: float  # wall budget of the whole check, from the end of the imports
    reserve_s: float  # kept back at the end for stopping algorithms and Ray
    training: dict[str, Any]  # `.training(...)` overrides on breakout.yaml
    env_runners: dict[str, Any]  # `.env_runners(...)` for the self-play algorithm
    reanalyze_workers: tuple[int, ...]
    cpus_per_worker: float
    gpus_per_worker: float
    queue_per_worker: int = 2  # reanalyze_queue_size = max(1, queue_per_worker * workers)
    roots: tuple[int, ...] = (1, 8, 64)
    model_repeats: int = 10
    floor_box_s: float = 8.0  # per root count
    update_repeats: int = 10
    self_play_s: float = 60.0
    min_buffer_steps: int = 256
    warm_updates: int = 2  # per worker (at least this many)
    train_s: float = 35.0  # time box of the timed `_train(n)` per worker count
    min_updates: int = 4
    max_updates: int = 2000
    min_stage_s: float = 20.0  # a worker count is skipped with less time than this left


def gpu_plan(mixed_precision: bool) -> Plan:
    return Plan(
        mode="gpu", use_gpu=True, mixed_precision=mixed_precision, budget_s=420.0,
        reserve_s=25.0, training={}, env_runners={}, reanalyze_workers=(0, 4, 8),
        cpus_per_worker=1.0, gpus_per_worker=0.1,
    )


def smoke_plan() -> Plan:
    training = dict(
        TINY_NETWORK, num_simulations=4, batch_size=16, history_length=50,
        target_update_interval=10,
    )
    return Plan(
        mode="cpu-smoke", use_gpu=False, mixed_precision=False, budget_s=150.0, reserve_s=8.0,
        training=training,
        env_runners=dict(num_env_runners=0, num_envs_per_env_runner=2,
                         rollout_fragment_length=25, num_gpus_per_env_runner=0),
        reanalyze_workers=(0, 1, 2), cpus_per_worker=0.5, gpus_per_worker=0.0,
        queue_per_worker=2, model_repeats=3, floor_box_s=4.0, update_repeats=3,
        self_play_s=10.0, min_buffer_steps=64, warm_updates=2, train_s=8.0, min_updates=3,
        max_updates=60, min_stage_s=12.0,
    )


class Recorder:
    """The figures so far; written to JSON after every stage (and by the watchdog)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"errors": {}, "stages_s": {}}
        self.lock = threading.Lock()

    def figure(self, key: str, value: Any, unit: str = "", show: str | None = None) -> None:
        """Stores `value` under the dotted `key` and prints it."""
        *parents, last = key.split(".")
        with self.lock:
            node = self.data
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {show or key}: {text} {unit}".rstrip(), flush=True)

    def error(self, stage: str, text: str) -> None:
        with self.lock:
            self.data["errors"][stage] = text
        print(f"  [{stage}] FAILED: {text.strip().splitlines()[-1]}", flush=True)

    def write(self) -> None:
        with self.lock:
            self.data["wall_s"] = time.monotonic() - STARTED
            text = json.dumps(_finite(self.data), indent=2, sort_keys=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.path)

    def stage(self, name: str, fn: Callable[[], Any], default: Any = None) -> Any:
        """Runs one stage; its error (with traceback) goes to `errors[name]`, not up."""
        print(f"\n== {name} ({time.monotonic() - STARTED:.0f} s in)", flush=True)
        start = time.monotonic()
        try:
            return fn()
        except Exception:  # any failure of a stage is recorded, the others go on
            self.error(name, traceback.format_exc(limit=12))
            return default
        finally:
            with self.lock:
                self.data["stages_s"][name] = round(time.monotonic() - start, 2)
            self.write()


def _finite(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Clock:
    """The check's wall budget, counted from the end of the imports."""

    def __init__(self, budget_s: float, reserve_s: float) -> None:
        self.deadline = STARTED + budget_s
        self.reserve_s = reserve_s

    def left(self) -> float:
        """Seconds left for stages (the reserve for shutting down excluded)."""
        return self.deadline - self.reserve_s - time.monotonic()


def start_watchdog(recorder: Recorder, budget_s: float,
                   grace_s: float = 20.0) -> threading.Timer:
    """Ends the process `grace_s` after the budget, whatever a stage is doing."""

    def fire() -> None:
        print(f"\nwatchdog: {budget_s + grace_s:.0f} s reached, exiting", flush=True)
        recorder.error("watchdog", f"killed after {budget_s + grace_s:.0f} s")
        recorder.write()
        stopper = threading.Thread(target=ray.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout=10)
        os._exit(3)

    timer = threading.Timer(budget_s + grace_s - (time.monotonic() - STARTED), fire)
    timer.daemon = True
    timer.start()
    return timer


# -- building -----------------------------------------------------------------------------------


def breakout_experiment() -> dict[str, Any]:
    (experiment,) = load_yaml(str(BREAKOUT_YAML)).values()
    return experiment


def make_config(plan: Plan, workers: int, self_play: bool) -> BarlowZeroConfig:
    """breakout.yaml with the plan's overrides and `workers` reanalyze workers.

    `self_play`: keep the plan's (for GPU: breakout.yaml's) env runners; otherwise one local
    runner with one env, which never samples (the algorithm only trains on a copied buffer).
    """
    experiment = breakout_experiment()
    config = BarlowZeroConfig().environment(experiment["env"])
    config.update_from_dict(experiment["config"])
    config.training(
        **plan.training,
        mixed_precision=plan.mixed_precision,
        num_reanalyze_workers=workers,
        reanalyze_queue_size=max(1, plan.queue_per_worker * workers),
        num_cpus_per_reanalyze_worker=plan.cpus_per_worker,
        num_gpus_per_reanalyze_worker=plan.gpus_per_worker,
    )
    config.learners(num_learners=0, num_gpus_per_learner=1 if plan.use_gpu else 0)
    if self_play:
        config.env_runners(**plan.env_runners)
    else:
        config.env_runners(num_env_runners=0, num_envs_per_env_runner=1,
                           num_gpus_per_env_runner=0)
    config.evaluation(evaluation_interval=None, evaluation_num_env_runners=0)
    return config


def describe(config: BarlowZeroConfig) -> dict[str, Any]:
    return {
        "env": config.env,
        "network": {k: getattr(config, k) for k in NETWORK_KEYS},
        "num_simulations": config.num_simulations,
        "batch_size": config.batch_size,
        "num_unroll_steps": config.num_unroll_steps,
        "num_env_runners": config.num_env_runners,
        "num_envs_per_env_runner": config.num_envs_per_env_runner,
        "num_gpus_per_env_runner": config.num_gpus_per_env_runner,
        "rollout_fragment_length": config.rollout_fragment_length,
        "num_gpus_per_learner": config.num_gpus_per_learner,
        "mixed_precision": config.mixed_precision,
        "revisit_policy_search_rate": config.revisit_policy_search_rate,
        "target_update_interval": config.target_update_interval,
    }


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_median(fn: Callable[[], Any], repeats: int, box_s: float,
                 device: torch.device) -> tuple[float, int]:
    """Median seconds of `fn` after one untimed call: up to `repeats` calls within `box_s`."""
    fn()
    sync_device(device)
    times: list[float] = []
    end = time.monotonic() + box_s
    while len(times) < repeats and (not times or time.monotonic() < end):
        start = time.perf_counter()
        fn()
        sync_device(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


# -- stages -------------------------------------------------------------------------------------


class ModelCallTimer:
    """Times a network's `initial_inference` / `recurrent_inference` calls, each synced, while
    they run inside a search (the instance's methods are wrapped until exit)."""

    NAMES = ("initial_inference", "recurrent_inference")

    def __init__(self, network: torch.nn.Module, device: torch.device) -> None:
        self.network, self.device = network, device
        self.seconds, self.calls = 0.0, 0

    def __enter__(self) -> ModelCallTimer:
        for name in self.NAMES:
            setattr(self.network, name, self._wrap(getattr(self.network, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.NAMES:
            delattr(self.network, name)

    def _wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = method(*args, **kwargs)
            sync_device(self.device)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return out

        return timed


@torch.no_grad()
def model_calls(network: torch.nn.Module, obs: torch.Tensor, num_simulations: int) -> None:
    """A search's model calls outside it: 1 initial + `num_simulations` recurrent, each synced
    (the tree needs every result before the next call)."""
    device = obs.device
    root = network.initial_inference(obs)
    sync_device(device)
    lstm = network.initial_lstm_state(obs.shape[0], device)
    actions = torch.zeros(obs.shape[0], dtype=torch.int64, device=device)
    for _ in range(num_simulations):
        network.recurrent_inference(root.state, lstm, actions)
        sync_device(device)


def floor_and_search(network: torch.nn.Module, obs: torch.Tensor, mcts_config: Any,
                     repeats: int, box_s: float) -> dict[str, float]:
    """Medians over up to `repeats` rounds (within `box_s`, after one warm-up round) of: the
    model calls alone, the full search, and the model calls timed inside that search."""
    device = obs.device
    sims = mcts_config.num_simulations
    alone, full, inside, calls = [], [], [], 0
    end = time.monotonic() + box_s
    for i in range(repeats + 1):
        start = time.perf_counter()
        model_calls(network, obs, sims)
        alone_s = time.perf_counter() - start
        with ModelCallTimer(network, device) as timer:
            start = time.perf_counter()
            search(network, obs, mcts_config, noise=None, seed=0)
            sync_device(device)
            full_s = time.perf_counter() - start
        if i > 0:  # round 0 warms up
            alone.append(alone_s)
            full.append(full_s)
            inside.append(timer.seconds)
            calls = timer.calls
        if i > 0 and time.monotonic() > end:
            break
    model_s, search_s = statistics.median(inside), statistics.median(full)
    return {
        "model_calls_s": model_s,
        "search_s": search_s,
        "search_overhead_s": search_s - model_s,
        "overhead_share": (search_s - model_s) / search_s,
        "model_calls_alone_s": statistics.median(alone),
        "model_calls_per_search": calls,
        "repeats": len(full),
    }


def model_floors(algo: Any, plan: Plan, rec: Recorder) -> None:
    """Per root count: model calls vs the full search (each figure a median over rounds)."""
    network = algo.reanalyzer.target_network.eval()
    mcts_config = algo.reanalyzer.mcts_config
    device = next(network.parameters()).device
    rng = np.random.default_rng(0)
    rec.figure("model_floors_device", str(device))
    for roots in plan.roots:
        obs_np = rng.integers(0, 256, (roots, *network.observation_shape), dtype=np.uint8)
        obs = torch.from_numpy(obs_np).to(device)
        row = floor_and_search(network, obs, mcts_config, plan.model_repeats, plan.floor_box_s)
        units = {"repeats": "", "model_calls_per_search": "", "overhead_share": ""}
        for name, value in row.items():
            rec.figure(f"model_floors.{roots}.{name}", value, units.get(name, "s"),
                       f"{roots:>2} roots: {name}")


def self_play(algo: Any, plan: Plan, clock: Clock, rec: Recorder) -> None:
    """Env steps/s as `training_step` samples; the episodes go into the replay buffer."""
    cfg = algo.config
    per_call = cfg.rollout_fragment_length * cfg.num_envs_per_env_runner * max(
        1, cfg.num_env_runners)
    buffer = algo.replay_buffer

    def sample() -> tuple[int, float]:
        start = time.perf_counter()
        episodes = synchronous_parallel_sample(
            worker_set=algo.env_runner_group, max_env_steps=per_call,
            sample_timeout_s=cfg.sample_timeout_s, _uses_new_env_runners=True,
        )
        seconds = time.perf_counter() - start
        return sum(add_episode_chunk(buffer, e, 0) for e in episodes), seconds

    warm_steps, warm_s = sample()
    rec.figure("self_play.warmup_call_s", warm_s, "s", "first sample call (untimed)")
    box_end = time.monotonic() + min(plan.self_play_s, max(5.0, clock.left() / 4))
    steps, seconds, calls = 0, 0.0, 0
    # Time-boxed, but on until the buffer can feed the later stages (within the budget).
    while calls == 0 or time.monotonic() < box_end or (
            len(buffer) < plan.min_buffer_steps and clock.left() > 60):
        n, s = sample()
        steps, seconds, calls = steps + n, seconds + s, calls + 1
    rec.figure("self_play.env_steps_per_s", steps / seconds, "steps/s", "self-play env steps/s")
    rec.figure("self_play.env_steps", steps)
    rec.figure("self_play.seconds", seconds, "s")
    rec.figure("self_play.calls", calls)
    rec.figure("self_play.steps_per_call", per_call)
    rec.figure("replay.sampleable_steps", len(buffer))
    rec.figure("replay.env_steps_collected", warm_steps + steps)
    rec.figure("replay.bytes_per_step", float(buffer.bytes_per_step()))


def learner_update(algo: Any, rec: Recorder, plan: Plan) -> None:
    """One reanalyze batch made on the driver, then learner updates on it alone."""
    cfg = algo.config
    windows = algo.replay_buffer.sample(cfg.batch_size)
    start = time.perf_counter()
    batch = algo.reanalyzer.make_batch(windows, 0, 0)
    rec.figure("reanalyze_make_batch_s", time.perf_counter() - start, "s",
               "one reanalyze batch alone (driver)")
    device = algo.reanalyzer.device
    multi = MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(batch)}, env_steps=cfg.batch_size)

    def update() -> None:
        algo.learner_group.update(batch=multi, timesteps={})

    update()  # the first call builds the optimizer state
    seconds, repeats = timed_median(update, plan.update_repeats, 10.0, device)
    rec.figure("learner_update_s", seconds, "s", f"learner update alone (batch {cfg.batch_size})")
    rec.figure("learner_update_batch_size", cfg.batch_size)
    rec.figure("learner_update_repeats", repeats)


def pipelined(algo: Any, workers: int, plan: Plan, box_s: float, rec: Recorder) -> None:
    """`_train` warm-up, then `_train(n)` sized to `box_s`; the metrics of that call."""
    warm = max(plan.warm_updates, plan.warm_updates * workers)
    algo._train(max(1, workers))  # worker start-up and first searches
    start = time.perf_counter()
    algo._train(warm)
    rate = warm / (time.perf_counter() - start)
    n = int(min(plan.max_updates, max(plan.min_updates, rate * box_s)))
    start = time.perf_counter()
    algo._train(n)
    elapsed = time.perf_counter() - start
    peek = algo.metrics.peek
    key = f"reanalyze.{workers}"
    label = f"{workers} workers"
    rec.figure(f"{key}.batches_per_s", peek(("reanalyze", "batches_per_s")), "batches/s",
               f"{label}: reanalyze batches/s (pipelined)")
    rec.figure(f"{key}.learner_steps_per_s", peek("learner_steps_per_s"), "steps/s",
               f"{label}: learner steps/s")
    rec.figure(f"{key}.learner_idle_share", peek("learner_idle_share"), "",
               f"{label}: learner idle share")
    rec.figure(f"{key}.reanalyze_batch_s", peek((TIMERS, "reanalyze_batch_s")), "s",
               f"{label}: seconds per batch on its maker")
    rec.figure(f"{key}.learner_update_s", peek((TIMERS, "learner_update_s")), "s",
               f"{label}: seconds per update")
    rec.figure(f"{key}.queue_depth_mean", peek(("reanalyze", "queue_depth_mean")))
    rec.figure(f"{key}.updates", n)
    rec.figure(f"{key}.seconds", elapsed, "s")
    rec.figure(f"{key}.queue_size", algo.config.reanalyze_queue_size)


def missing_resources(workers: int, plan: Plan, wait_s: float = 15.0) -> str | None:
    """Why `workers` reanalyze workers could not be placed now (None: they can). Waits up to
    `wait_s` for the actors of a stopped algorithm to hand their resources back."""
    end = time.monotonic() + wait_s
    while True:
        free = ray.available_resources()
        short = [f"{workers} workers need {workers * each:g} {name}, Ray has {free.get(name, 0)}"
                 for name, each in (("CPU", plan.cpus_per_worker), ("GPU", plan.gpus_per_worker))
                 if each > 0 and free.get(name, 0.0) + 1e-9 < workers * each]
        if not short or time.monotonic() > end:
            return "; ".join(short) or None
        time.sleep(0.5)


def reanalyze_stage(plan: Plan, workers: int, clock: Clock, rec: Recorder, counts_left: int,
                    first: Any = None, buffer_state: dict[str, Any] | None = None) -> None:
    """The pipelined figures of one worker count, on `first` or on a fresh algorithm."""
    name = f"reanalyze_{workers}_workers"
    share = clock.left() / counts_left
    if share < plan.min_stage_s:
        rec.error(name, f"skipped: {clock.left():.0f} s left of the budget")
        rec.write()
        return

    def run() -> None:
        stage_end = time.monotonic() + share
        algo = first
        if algo is None:
            if buffer_state is None:
                raise RuntimeError("no replay buffer to train on (self-play failed)")
            problem = missing_resources(workers, plan)
            if problem:
                raise RuntimeError(f"skipped: {problem}")
            algo = make_config(plan, workers, self_play=False).build_algo()
        try:
            if first is None:
                algo.replay_buffer.set_state(buffer_state)
            box = min(plan.train_s, (stage_end - time.monotonic()) * 0.5)
            pipelined(algo, workers, plan, max(1.0, box), rec)
        finally:
            if first is None:
                algo.stop()

    rec.stage(name, run)


def learner_summary(rec: Recorder) -> None:
    rows = {int(k): v for k, v in rec.data.get("reanalyze", {}).items()
            if isinstance(v, dict) and v.get("learner_steps_per_s")}
    if not rows:
        raise RuntimeError("no pipelined learner figure (every reanalyze stage failed)")
    best = max(rows, key=lambda w: rows[w]["learner_steps_per_s"])
    rec.figure("learner.best_num_reanalyze_workers", best)
    rec.figure("learner.steps_per_s", rows[best]["learner_steps_per_s"], "steps/s",
               "best pipelined learner steps/s")
    rec.figure("learner.idle_share", rows[best]["learner_idle_share"], "",
               "its learner idle share")


def projection(rec: Recorder) -> None:
    """breakout.yaml's wall time from the self-play rate and the best pipelined learner rate
    (without a pipelined figure: one reanalyze batch then one update, back to back)."""
    yaml_config = BarlowZeroConfig().update_from_dict(breakout_experiment()["config"])
    env_steps, training_steps = yaml_config.total_env_steps, yaml_config.training_steps
    env_rate = rec.data.get("self_play", {}).get("env_steps_per_s")
    learner_rate = rec.data.get("learner", {}).get("steps_per_s")
    source = "learner.steps_per_s (best pipelined)"
    alone = [rec.data.get(k) for k in ("learner_update_s", "reanalyze_make_batch_s")]
    if not learner_rate and all(alone):
        learner_rate = 1.0 / sum(alone)
        source = "1 / (learner_update_s + reanalyze_make_batch_s): no pipelined figure"
    if not env_rate or not learner_rate:
        raise RuntimeError(f"missing rates: self-play {env_rate}, learner {learner_rate}")
    self_play_h = env_steps / env_rate / 3600
    learner_h = training_steps / learner_rate / 3600
    total_h = self_play_h + learner_h
    with rec.lock:
        rec.data["projected"] = {
            "yaml": str(BREAKOUT_YAML.relative_to(ROOT)), "total_env_steps": env_steps,
            "training_steps": training_steps, "env_steps_per_s": env_rate,
            "learner_steps_per_s": learner_rate, "learner_rate_source": source,
            "self_play_h": self_play_h, "learner_h": learner_h, "total_h": total_h,
        }
    print(f"  projected {BREAKOUT_YAML.name} wall time: {total_h:.1f} h (self-play "
          f"{self_play_h:.1f} h + learner {learner_h:.1f} h; {env_steps} env steps at "
          f"{env_rate:.3g}/s, {training_steps} training steps at {learner_rate:.3g}/s)",
          flush=True)


# -- main ---------------------------------------------------------------------------------------


def environment_info(plan: Plan, rec: Recorder) -> None:
    device = torch.cuda.get_device_name(0) if plan.use_gpu else "cpu"
    rec.figure("device", device)
    rec.figure("mode", plan.mode)
    rec.figure("torch_version", torch.__version__)
    rec.figure("ray_version", ray.__version__)
    rec.figure("python_version", sys.version.split()[0])
    rec.figure("cpu_count", os.cpu_count())
    rec.figure("mixed_precision", plan.mixed_precision)
    with rec.lock:
        rec.data["plan"] = asdict(plan)


def print_table(rec: Recorder) -> None:
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        elif isinstance(node, float):
            rows.append((prefix, f"{node:,.4g}"))
        else:
            rows.append((prefix, str(node)))

    for key in ("device", "mode", "mixed_precision", "model_floors", "learner_update_s",
                "reanalyze_make_batch_s", "self_play", "replay", "reanalyze", "learner",
                "projected", "errors", "wall_s"):
        walk(key, rec.data.get(key, {}) if key != "wall_s" else rec.data.get(key))
    width = max((len(k) for k, _ in rows), default=6)
    print(f"\n{'figure':{width}}  value")
    for key, value in rows:
        print(f"{key:{width}}  {value.splitlines()[-1] if value else value}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."),
                        help=f"folder for {JSON_NAME} (default: $OUT, else .)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny configuration on the CPU (CI), same code path")
    parser.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast in the learner (default: on with a GPU)")
    parser.add_argument("--num-env-runners", type=int, default=None,
                        help="override the self-play env runners (GPU: breakout.yaml's 2, "
                        "smoke: 0, the local one)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall budget of the whole check (GPU 420, smoke 150)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    use_gpu = torch.cuda.is_available() and not args.cpu_smoke
    if use_gpu:
        plan = gpu_plan(True if args.mixed_precision is None else args.mixed_precision)
    else:
        if args.mixed_precision:
            print("--mixed-precision needs a GPU learner: off on the CPU", flush=True)
        plan = smoke_plan()
        if not args.cpu_smoke:
            plan.mode = "cpu-smoke (no GPU found)"
    if args.budget_s:
        plan.budget_s = args.budget_s
    if args.num_env_runners is not None:
        plan.env_runners["num_env_runners"] = args.num_env_runners
    rec = Recorder(Path(args.out) / JSON_NAME)
    clock = Clock(plan.budget_s, plan.reserve_s)
    watchdog = start_watchdog(rec, plan.budget_s)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rec.stage("environment", lambda: environment_info(plan, rec))
    if use_gpu:
        ray.init(num_cpus=os.cpu_count(), num_gpus=1, include_dashboard=False,
                 log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    def build_first() -> Any:
        try:
            algo = make_config(plan, plan.reanalyze_workers[0], self_play=True).build_algo()
        except Exception:
            if plan.env_runners.get("num_env_runners", 1) == 0:
                raise
            # Remote env runners failed: record why, go on with the local one (CPU acting).
            rec.error("build_remote_env_runners", traceback.format_exc(limit=12))
            plan.env_runners["num_env_runners"] = 0
            algo = make_config(plan, plan.reanalyze_workers[0], self_play=True).build_algo()
        with rec.lock:
            rec.data["config"] = describe(algo.config)
        print(f"  config: {json.dumps(rec.data['config'])}", flush=True)
        return algo

    first = rec.stage("build", build_first)
    counts = list(plan.reanalyze_workers)
    buffer_state = None
    if first is not None:
        try:
            rec.stage("model_floors", lambda: model_floors(first, plan, rec))
            rec.stage("self_play", lambda: self_play(first, plan, clock, rec))
            rec.stage("learner_update", lambda: learner_update(first, rec, plan))
            reanalyze_stage(plan, counts[0], clock, rec, len(counts), first=first)
            if len(first.replay_buffer) >= first.config.batch_size:
                buffer_state = first.replay_buffer.get_state()
        finally:
            # Its env runners' GPU shares go back to Ray before the workers ask for theirs.
            rec.stage("stop_first", first.stop)
    for i, workers in enumerate(counts[1:]):
        reanalyze_stage(plan, workers, clock, rec, len(counts) - 1 - i,
                        buffer_state=buffer_state)
    rec.stage("learner_summary", lambda: learner_summary(rec))
    rec.stage("projection", lambda: projection(rec))
    rec.stage("ray_shutdown", ray.shutdown)
    watchdog.cancel()
    print_table(rec)
    rec.write()
    failed = sorted(rec.data["errors"])
    print(f"\nwrote {rec.path} ({time.monotonic() - STARTED:.0f} s); "
          f"{'failed stages: ' + ', '.join(failed) if failed else 'every stage ran'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
