"""Whole-episode evaluation without length bias: a fixed quota of episodes per vector-env slot.

A toy env whose episode length depends on its reset seed (so on its slot) logs every episode it
finishes; the episodes the env runner returns, its metrics, `Algorithm.evaluate()` and
`play_games` are checked against that log.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger
from ray.tune.registry import register_env

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.env_runner import BarlowZeroEnvRunner, episode_quotas
from rllib_barlowzero.evaluate import _on_episode_end, format_table, play_games

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import MICRO_NETWORK
except ImportError:  # tests/ imported as a package
    from tests.tiny import MICRO_NETWORK

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ENV = "barlowzero-test-variable-length"
SEED = 0
NUM_ENVS = 4  # per evaluation env runner
EPISODES = 8

TINY = dict(
    MICRO_NETWORK, mlp_hidden_layers=[16], num_simulations=2, batch_size=4, history_length=20,
    num_steps_sampled_before_learning_starts=10_000, stacked_observations=2,
)


class VariableLengthEnv(gym.Env):
    """Reward 1 per step, so an episode's return is its length.

    The first reset's seed picks the lengths: seed % 4 == 0 (slot 0 of a runner seeded with a
    multiple of 4) plays long episodes of 30..40 steps, other seeds short ones of 2..10 steps.
    Episodes longer than `env_config["time_limit"]` (if any) are truncated there. Every seeded
    reset starts a new `log` of the finished episodes: (ordinal, length, truncated), and a new
    `action_log`: ordinal -> the actions it received; the reset infos carry the env's `serial`
    number and the episode's `ordinal`.
    """

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)
    instances: list[VariableLengthEnv] = []

    def __init__(self, config: dict | None = None) -> None:
        self.time_limit = (config or {}).get("time_limit")
        self.serial = len(VariableLengthEnv.instances)
        VariableLengthEnv.instances.append(self)
        self.log: list[tuple[int, int, bool]] = []
        self.action_log: dict[int, list[int]] = {}
        self.long = False
        self.ordinal = -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.long, self.ordinal, self.log, self.action_log = seed % 4 == 0, -1, [], {}
        self.ordinal += 1
        self.action_log[self.ordinal] = []
        self.length = int(self.np_random.integers(30, 41) if self.long
                          else self.np_random.integers(2, 11))
        self.t = 0
        return self._obs(), {"serial": self.serial, "ordinal": self.ordinal}

    def _obs(self) -> np.ndarray:
        return np.array([self.t / 40, self.length / 40, self.ordinal / 10, 0.0], np.float32)

    def step(self, action):
        self.action_log[self.ordinal].append(int(action))
        self.t += 1
        terminated = self.t >= self.length
        truncated = not terminated and self.time_limit is not None and self.t >= self.time_limit
        if terminated or truncated:
            self.log.append((self.ordinal, self.t, truncated))
        return self._obs(), 1.0, terminated, truncated, {}


# (serial, ordinal) of every episode whose `on_episode_end` callback ran.
EPISODE_ENDS: list[tuple[int, int]] = []


def _record_episode_end(*, episode, **kwargs) -> None:
    info = episode.get_infos(0)
    EPISODE_ENDS.append((int(info["serial"]), int(info["ordinal"])))
    _on_episode_end(episode=episode, **kwargs)  # `rllib evaluate`'s progress bar


def tiny_config(**env_config) -> BarlowZeroConfig:
    return (
        BarlowZeroConfig()
        .environment(ENV, env_config=env_config)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1, rollout_fragment_length=10)
        .training(**TINY)
        .evaluation(
            evaluation_interval=1,
            evaluation_duration=EPISODES,
            evaluation_num_env_runners=0,
            evaluation_config={
                "explore": False,
                "num_envs_per_env_runner": NUM_ENVS,
                "callbacks_on_episode_end": _record_episode_end,
            },
        )
        .debugging(seed=SEED)
    )


@pytest.fixture(scope="module", autouse=True)
def registered_env(ray_session):
    # After ray.init: a Tune registration does not survive an earlier test file's ray.shutdown.
    register_env(ENV, VariableLengthEnv)


@pytest.fixture(scope="module")
def algo():
    algo = tiny_config().build_algo()
    yield algo
    algo.stop()


def slot_envs(runner) -> list[VariableLengthEnv]:
    """The runner's sub-envs, in slot order."""
    return [env.unwrapped for env in runner.env.unwrapped.envs]


def first_per_slot(runner, quotas) -> dict[tuple[int, int], tuple[int, bool]]:
    """From the envs' own logs: (slot, ordinal) -> (length, truncated) of each slot's first
    `quotas[slot]` finished episodes of the last seeded run."""
    return {
        (slot, ordinal): (length, truncated)
        for slot, env in enumerate(slot_envs(runner))
        for ordinal, length, truncated in env.log[: quotas[slot]]
    }


def slot_and_ordinal(runner, episode) -> tuple[int, int]:
    serials = [env.serial for env in slot_envs(runner)]
    info = episode.get_infos(0)
    return serials.index(int(info["serial"])), int(info["ordinal"])


def test_quotas_split_the_episodes_evenly_first_slots_first():
    assert episode_quotas(8, 4) == [2, 2, 2, 2]
    assert episode_quotas(10, 4) == [3, 3, 2, 2]
    assert episode_quotas(2, 4) == [1, 1, 0, 0]
    assert episode_quotas(0, 3) == [0, 0, 0]


def test_the_toy_env_makes_rllibs_sampler_drop_long_episodes(algo):
    # The bias being fixed: RLlib's own runner keeps the first 8 episodes to finish, and slot 0's
    # long ones are not among them.
    stock = SingleAgentEnvRunner(config=algo.evaluation_config)
    try:
        episodes = stock.sample(num_episodes=EPISODES, random_actions=True)
        slots = Counter(slot_and_ordinal(stock, e)[0] for e in episodes)
        assert len(episodes) == EPISODES and slots[0] == 0
    finally:
        stock.stop()


def test_sample_returns_the_first_quota_of_every_slot(algo):
    runner = algo.eval_env_runner
    assert isinstance(runner, BarlowZeroEnvRunner) and runner.num_envs == NUM_ENVS
    runner.get_metrics()  # start from empty episode metrics
    EPISODE_ENDS.clear()

    episodes = runner.sample(num_episodes=EPISODES, explore=False)

    expected = first_per_slot(runner, [2] * NUM_ENVS)
    got = {slot_and_ordinal(runner, e): e for e in episodes}
    assert len(episodes) == EPISODES and len(got) == EPISODES
    assert sorted(got) == sorted(expected) == [(s, k) for s in range(NUM_ENVS) for k in (0, 1)]
    for key, episode in got.items():
        assert episode.is_done and not episode.is_truncated
        assert (len(episode), False) == expected[key]
        assert episode.get_return() == len(episode)
    # Slot 0's long episodes are kept; the short slots played (and dropped) more meanwhile.
    assert min(len(got[0, k]) for k in (0, 1)) >= 30
    assert all(len(env.log) > 2 for env in slot_envs(runner)[1:])
    # Episode callbacks ran for the kept episodes only.
    serials = [env.serial for env in slot_envs(runner)]
    assert sorted(EPISODE_ENDS) == sorted((serials[s], k) for s, k in expected)

    metrics = MetricsLogger.peek_results(runner.get_metrics())
    lengths = [length for length, _ in expected.values()]
    assert metrics["num_episodes"] == EPISODES
    assert metrics["episode_return_mean"] == pytest.approx(np.mean(lengths))
    assert metrics["episode_len_max"] == max(lengths)
    assert metrics["episode_len_min"] == min(lengths)
    assert metrics["num_env_steps_sampled"] == sum(lengths)
    assert metrics["num_episodes_truncated"] == 0


def test_fewer_episodes_than_envs_come_from_the_first_slots(algo):
    runner = algo.eval_env_runner
    EPISODE_ENDS.clear()
    episodes = runner.sample(num_episodes=2, random_actions=True)
    assert sorted(slot_and_ordinal(runner, e) for e in episodes) == [(0, 0), (1, 0)]
    assert len(EPISODE_ENDS) == 2
    assert MetricsLogger.peek_results(runner.get_metrics())["num_episodes"] == 2


def test_algorithm_evaluate_reports_exactly_the_kept_episodes(algo):
    for _ in range(2):  # every evaluation replays the same seeded games
        evaluation = algo.evaluate()["env_runners"]
        lengths = [length for length, _ in first_per_slot(algo.eval_env_runner,
                                                         [2] * NUM_ENVS).values()]
        assert evaluation["num_episodes"] == EPISODES
        assert evaluation["episode_return_mean"] == pytest.approx(np.mean(lengths))
        assert evaluation["episode_return_max"] == max(lengths) >= 30
        assert evaluation["episode_return_min"] == min(lengths)
        assert evaluation["num_episodes_truncated"] == 0


def test_play_games_plays_exactly_the_quota_and_moves_the_bar_for_kept_games(
    algo, capsys, monkeypatch
):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar is drawn on terminals
    report = play_games(algo, episodes=EPISODES)
    expected = first_per_slot(algo.eval_env_runner, [2] * NUM_ENVS)
    lengths = sorted(length for length, _ in expected.values())
    assert report["episodes"] == EPISODES
    assert sorted(report["lengths"]) == lengths and sorted(report["scores"]) == lengths
    assert report["truncated"] == 0 and report["truncated_share"] == 0.0
    # Moves per action over the kept games, from the actions the envs themselves received.
    quota = EPISODES // NUM_ENVS
    received = [a for env in slot_envs(algo.eval_env_runner)
                for ordinal, _, _ in env.log[:quota] for a in env.action_log[ordinal]]
    assert report["action_counts"] == [received.count(0), received.count(1)]
    assert sum(report["action_counts"]) == sum(lengths)
    bar = capsys.readouterr().err
    assert f"{EPISODES}/{EPISODES}" in bar and f"{EPISODES + 1}/" not in bar
    mean = float(re.findall(r"mean (\S+)", bar)[-1])
    assert mean == pytest.approx(np.mean(lengths), abs=0.05)


def test_truncated_games_are_counted():
    # Slot 0's games (30..40 steps) are cut at 20 steps; the others (2..10) end by themselves.
    algo = tiny_config(time_limit=20).build_algo()
    try:
        result = algo.train()["evaluation"]["env_runners"]
        expected = first_per_slot(algo.eval_env_runner, [2] * NUM_ENVS)
        truncated = sum(t for _, t in expected.values())
        assert truncated == 2 and expected[0, 0] == (20, True)
        assert result["num_episodes"] == EPISODES
        assert result["num_episodes_truncated"] == truncated
        assert result["episode_return_mean"] == pytest.approx(
            np.mean([length for length, _ in expected.values()]))

        report = play_games(algo, episodes=EPISODES, progress=False)
        assert report["truncated"] == 2 and report["truncated_share"] == 2 / EPISODES
        assert "games cut at the move cap: 2 of 8 (25%)" in format_table(report)
    finally:
        algo.stop()


def test_timestep_sampling_is_rllibs():
    config = tiny_config().env_runners(num_envs_per_env_runner=2)
    runs = []
    for cls in (SingleAgentEnvRunner, BarlowZeroEnvRunner):
        runner = cls(config=config)
        try:
            if runs:
                runner.module.set_state(runs[0][0])
            runner.module.set_random_streams((SEED, 2, 0))  # the same acting streams
            samples = [runner.sample(num_timesteps=24, explore=False) for _ in range(2)]
            metrics = MetricsLogger.peek_results(runner.get_metrics())
            runs.append((runner.module.get_state(), samples, metrics))
        finally:
            runner.stop()
    (_, stock, stock_metrics), (_, ours, our_metrics) = runs
    for stock_chunks, our_chunks in zip(stock, ours, strict=True):
        assert len(stock_chunks) == len(our_chunks)
        for a, b in zip(stock_chunks, our_chunks, strict=True):
            assert (len(a), a.is_done, a.is_truncated, a.t_started) == (
                len(b), b.is_done, b.is_truncated, b.t_started)
            np.testing.assert_array_equal(a.get_observations(), b.get_observations())
            np.testing.assert_array_equal(a.get_actions(), b.get_actions())
            np.testing.assert_array_equal(a.get_rewards(), b.get_rewards())
    for key in ("num_env_steps_sampled", "num_episodes", "episode_return_mean"):
        assert our_metrics[key] == stock_metrics[key], key
    assert "num_episodes_truncated" not in our_metrics
