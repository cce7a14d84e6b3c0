"""Tests for stack_frames and the FrameStackingEnvToModule connector."""

from __future__ import annotations

import itertools
from collections import defaultdict

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rllib_barlowzero.env.atari import atari_env_creator
from rllib_barlowzero.env.frame_stacking import (
    FrameStackingEnvToModule,
    stack_frames,
    stacked_observation_space,
)


def naive_stack(frames: np.ndarray, t: int, n: int) -> np.ndarray:
    """Straightforward reference: o_{t-n+1..t}, oldest first, o_0 repeated before the start."""
    picked = [frames[max(k, 0)] for k in range(t - n + 1, t + 1)]
    if frames.ndim == 1:
        return np.array(picked)
    return np.concatenate(picked, axis=0)


# --------------------------------------------------------------------------- stack_frames


@pytest.mark.parametrize("shape", [(3, 5, 4), (4,), (1, 2), ()])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_stack_frames_matches_naive(shape, n):
    rng = np.random.default_rng(0)
    T = 7
    frames = rng.integers(0, 256, size=(T, *shape)).astype(np.uint8)
    for t in range(T):
        out = stack_frames(frames, t, n)
        ref = naive_stack(frames, t, n)
        assert out.dtype == frames.dtype and out.shape == ref.shape
        np.testing.assert_array_equal(out, ref)
    if shape:
        assert stack_frames(frames, 0, n).shape == (n * shape[0], *shape[1:])
    # Batched t of any shape.
    ts = np.array([[0, 3, 6], [1, 1, 2]])
    out = stack_frames(frames, ts, n)
    for i, j in itertools.product(range(2), range(3)):
        np.testing.assert_array_equal(out[i, j], naive_stack(frames, int(ts[i, j]), n))


def test_stack_frames_start_repeats_first_frame_and_n1_is_identity():
    frames = np.arange(5 * 2 * 1 * 1).reshape(5, 2, 1, 1)
    out = stack_frames(frames, 1, 4)  # o_0, o_0, o_0, o_1
    np.testing.assert_array_equal(out[:, 0, 0], [0, 1, 0, 1, 0, 1, 2, 3])
    for t in range(5):
        np.testing.assert_array_equal(stack_frames(frames, t, 1), frames[t])


def test_stack_frames_errors():
    frames = np.zeros((3, 2))
    with pytest.raises(IndexError):
        stack_frames(frames, 3, 2)
    with pytest.raises(IndexError):
        stack_frames(frames, -1, 2)
    with pytest.raises(ValueError, match="n"):
        stack_frames(frames, 0, 0)
    with pytest.raises(TypeError):
        stack_frames(frames, 0.5, 2)


def test_stacked_observation_space():
    img = gym.spaces.Box(0, 255, (3, 96, 96), np.uint8)
    s = stacked_observation_space(img, 4)
    assert s.shape == (12, 96, 96) and s.dtype == np.uint8
    vec = gym.spaces.Box(np.float32([-1, -2]), np.float32([1, 2]), dtype=np.float32)
    s = stacked_observation_space(vec, 3)
    assert s.shape == (6,) and s.dtype == np.float32
    np.testing.assert_array_equal(s.low, [-1, -2, -1, -2, -1, -2])
    assert stacked_observation_space(vec, 1) == vec
    with pytest.raises(TypeError):
        stacked_observation_space(gym.spaces.Discrete(3), 2)


# ------------------------------------------------------------------ connector, no runner


def _episode(frames: np.ndarray) -> SingleAgentEpisode:
    space = gym.spaces.Box(-np.inf, np.inf, frames.shape[1:], np.float32)
    ep = SingleAgentEpisode(observation_space=space, action_space=gym.spaces.Discrete(2))
    ep.add_env_reset(observation=frames[0])
    for f in frames[1:]:
        ep.add_env_step(observation=f, action=0, reward=0.0)
    return ep


def _run_connector(conn, episode) -> np.ndarray:
    batch = conn(rl_module=None, batch={}, episodes=[episode])
    (item,) = batch[Columns.OBS][(episode.id_,)]
    return item


def test_connector_on_episode_chunks():
    frames = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    conn = FrameStackingEnvToModule(
        gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Discrete(2), num_frames=4
    )
    assert conn.observation_space.shape == (12,)
    for t in range(10):  # growing episode from its start
        np.testing.assert_array_equal(
            _run_connector(conn, _episode(frames[: t + 1])), stack_frames(frames, t, 4)
        )
    # A continued chunk with a lookback of 3 past frames.
    chunk = _episode(frames[:6]).cut(len_lookback_buffer=3)
    chunk.add_env_step(observation=frames[6], action=0, reward=0.0)
    np.testing.assert_array_equal(_run_connector(conn, chunk), stack_frames(frames, 6, 4))
    # Too short a lookback is an error, not a silent mis-stack.
    short = _episode(frames[:6]).cut(len_lookback_buffer=1)
    short.add_env_step(observation=frames[6], action=0, reward=0.0)
    with pytest.raises(ValueError, match="episode_lookback_horizon"):
        _run_connector(conn, short)
    # num_frames=1: passthrough (leaves OBS to RLlib's default connector).
    one = FrameStackingEnvToModule(num_frames=1)
    assert one(rl_module=None, batch={}, episodes=[_episode(frames[:3])]) == {}
    with pytest.raises(ValueError, match="num_frames"):
        FrameStackingEnvToModule(num_frames=0)


# ------------------------------------------------------- connector inside an env runner

# Every observation each env instance emitted, in order: {env_key: [(episode_no, t, obs)]}.
EMITTED: dict[int, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
_instance_counter = itertools.count()


class RecordObs(gym.Wrapper):
    """Records every observation the env emits (reset and step) into EMITTED."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.key = next(_instance_counter)
        self.episode_no, self.t = -1, 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.episode_no, self.t = self.episode_no + 1, 0
        EMITTED[self.key].append((self.episode_no, 0, np.array(obs)))
        return obs, info

    def step(self, action):
        obs, *rest = self.env.step(action)
        self.t += 1
        EMITTED[self.key].append((self.episode_no, self.t, np.array(obs)))
        return (obs, *rest)


class RecordingModule(TorchRLModule):
    """Random actions; records the observation batches it is given."""

    def setup(self):
        self.seen: list[np.ndarray] = []
        self._rng = np.random.default_rng(0)

    def _forward(self, batch, **kwargs):
        obs = batch[Columns.OBS]
        self.seen.append(obs.cpu().numpy().copy())
        actions = self._rng.integers(0, self.action_space.n, size=obs.shape[0])
        return {Columns.ACTIONS: torch.as_tensor(actions)}


class _TestConfig(AlgorithmConfig):
    def get_default_rl_module_spec(self):
        return RLModuleSpec(module_class=RecordingModule)


def _runner(env_creator, num_frames, num_envs, lookback) -> SingleAgentEnvRunner:
    EMITTED.clear()
    config = (
        _TestConfig()
        .environment(env_creator)
        .env_runners(
            num_env_runners=0,
            num_envs_per_env_runner=num_envs,
            episode_lookback_horizon=lookback,
            env_to_module_connector=lambda env, spaces, device: FrameStackingEnvToModule(
                num_frames=num_frames
            ),
        )
        .debugging(seed=0)
    )
    return SingleAgentEnvRunner(config=config)


def _check_module_inputs(runner, num_frames, num_envs):
    """The k-th module call saw stack_frames of each env's k-th emitted observation."""
    seen = runner.module.seen
    keys = sorted(EMITTED)
    assert len(keys) == num_envs
    per_episode = {key: defaultdict(list) for key in keys}  # key -> episode_no -> frames
    for key in keys:
        for ep_no, t, obs in EMITTED[key]:
            assert len(per_episode[key][ep_no]) == t
            per_episode[key][ep_no].append(obs)
    for k, batch_obs in enumerate(seen):
        assert batch_obs.shape[0] == num_envs
        for i, key in enumerate(keys):
            ep_no, t, _ = EMITTED[key][k]
            frames = np.stack(per_episode[key][ep_no])
            expected = stack_frames(frames, t, num_frames)
            np.testing.assert_array_equal(batch_obs[i], expected, err_msg=f"call {k} env {i}")


def _cartpole(cfg):
    return RecordObs(gym.make("CartPole-v1"))


@pytest.mark.parametrize("num_envs", [1, 2])
def test_connector_in_env_runner_cartpole(num_envs):
    n = 4
    runner = _runner(_cartpole, n, num_envs, lookback=n - 1)
    assert runner.module.observation_space.shape == (4 * n,)
    chunks = []
    for _ in range(4):
        chunks += runner.sample(num_timesteps=23 * num_envs)
    seen = runner.module.seen
    assert len(seen) >= 4 * 23 and seen[0].shape == (num_envs, 4 * n)
    # At least one episode finished and several chunks were cut and continued.
    assert sum(len(v) and v[-1][0] > 0 for v in EMITTED.values()) == num_envs
    _check_module_inputs(runner, n, num_envs)

    # Episodes keep single frames; for one env, their frames are the emitted ones.
    full: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for c in chunks:
        obs = c.get_observations()
        assert obs.shape[1:] == (4,)
        for i, o in enumerate(obs):
            full[c.id_][c.t_started + i] = o
    if num_envs == 1:
        emitted = EMITTED[next(iter(EMITTED))]
        for ep_no, ep_id in enumerate(full):  # ids in order of first appearance
            for t, o in full[ep_id].items():
                ref = next(x for x in emitted if x[0] == ep_no and x[1] == t)[2]
                np.testing.assert_array_equal(o, ref)
    runner.stop()


def test_connector_in_env_runner_needs_lookback():
    runner = _runner(_cartpole, 4, 1, lookback=1)
    runner.sample(num_timesteps=5)
    with pytest.raises(ValueError, match="episode_lookback_horizon"):
        for _ in range(3):
            runner.sample(num_timesteps=1)
    runner.stop()


def test_connector_in_env_runner_num_frames_1_is_passthrough():
    runner = _runner(_cartpole, 1, 1, lookback=1)
    assert runner.module.observation_space.shape == (4,)
    runner.sample(num_timesteps=30)
    _check_module_inputs(runner, 1, 1)
    runner.stop()


def _tiny_breakout(cfg):
    return RecordObs(
        atari_env_creator(
            {"env_id": "ALE/Breakout-v5", "frame_size": 16, "max_moves": 9, "training": True}
        )
    )


def test_connector_in_env_runner_atari():
    n = 4
    runner = _runner(_tiny_breakout, n, 1, lookback=n - 1)
    assert runner.module.observation_space.shape == (3 * n, 16, 16)
    assert runner.module.observation_space.dtype == np.uint8
    chunks = []
    for _ in range(3):
        chunks += runner.sample(num_timesteps=7)
    assert all(c.get_observations().shape[1:] == (3, 16, 16) for c in chunks)
    seen = runner.module.seen
    assert seen[0].shape == (1, 3 * n, 16, 16) and seen[0].dtype == np.uint8
    assert EMITTED[next(iter(EMITTED))][-1][0] >= 1  # crossed a (max_moves) episode boundary
    _check_module_inputs(runner, n, 1)
    runner.stop()


def test_per_row_stacks_each_rows_own_sequence():
    # Row b, index t: the frames t-n+1..t of row b's own sequence (repeating its first frame).
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 255, size=(3, 7, 2, 4, 4), dtype=np.uint8)  # [B, T, C, H, W]
    t = np.array([[0, 3], [6, 1], [2, 2]])  # [B, 2]
    out = stack_frames(frames, t, 3, per_row=True)
    assert out.shape == (3, 2, 6, 4, 4)
    for b in range(3):
        for p in range(2):
            want = np.concatenate([frames[b, max(t[b, p] + m, 0)] for m in (-2, -1, 0)])
            np.testing.assert_array_equal(out[b, p], want)
            np.testing.assert_array_equal(out[b, p], stack_frames(frames[b], t[b, p], 3))
    same_index = stack_frames(frames, 4, 2, per_row=True)  # an int: the same t in every row
    assert same_index.shape == (3, 4, 4, 4)
    for b in range(3):
        np.testing.assert_array_equal(same_index[b], np.concatenate(frames[b, 3:5]))
    with pytest.raises(ValueError, match="expected an int or an array"):
        stack_frames(frames, np.zeros(2, dtype=int), 2, per_row=True)
    with pytest.raises(IndexError):
        stack_frames(frames, 7, 2, per_row=True)
