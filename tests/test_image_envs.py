"""Any gymnasium image env: uint8 / bool / float, channels-first or -last, made uint8 [C, H, W]
frames in one place (rllib_barlowzero.env.image); small images keep their resolution in the
representation; MinAtar ids register on first use (tests skipped without `minatar`)."""

from __future__ import annotations

import os
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.barlowzero import register_env_with_move_cap
from rllib_barlowzero.env import (
    ChannelsFirstUint8,
    image_is_channels_first,
    is_minatar_env_id,
    make_gym_env,
    register_minatar_envs,
    to_channels_first_uint8,
)
from rllib_barlowzero.torch.networks import (
    DOWNSAMPLE_MIN_SIZE,
    BarlowZeroNetwork,
    choose_downsample,
)

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import MICRO_NETWORK
except ImportError:  # tests/ imported as a package
    from tests.tiny import MICRO_NETWORK

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

TOY_ID = "BarlowZeroTest/BoolImageHWC-v0"


class ToyImageEnv(gym.Env):
    """A dot (channel 0) on the bottom row chases a target column (channel 1), 3 actions.

    Observations are (H, W, 2) channels-last of `dtype` (bool by default; float32 gives values in
    {0, 0.5, 1} on channel 1 to check rounding; uint8 gives {0, 255}); 1 reward when the dot sits
    under the target; 12 steps an episode.
    """

    def __init__(self, height: int = 6, width: int = 7, dtype: str = "bool", steps: int = 12):
        self.height, self.width, self.steps = height, width, steps
        self.dtype = np.dtype(dtype)
        high = 255 if self.dtype == np.uint8 else 1
        self.observation_space = gym.spaces.Box(0, high, (height, width, 2), self.dtype)
        self.action_space = gym.spaces.Discrete(3)

    def _obs(self) -> np.ndarray:
        obs = np.zeros((self.height, self.width, 2), np.float32)
        obs[-1, self.pos, 0] = 1.0
        obs[0, self.target, 1] = 1.0
        obs[1, self.target, 1] = 0.5
        if self.dtype == np.bool_:
            return obs > 0.75
        if self.dtype == np.uint8:
            return (obs * 255).astype(np.uint8)
        return obs.astype(self.dtype)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = int(self.np_random.integers(self.width))
        self.target = int(self.np_random.integers(self.width))
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.pos = int(np.clip(self.pos + int(action) - 1, 0, self.width - 1))
        self.t += 1
        reward = float(self.pos == self.target)
        return self._obs(), reward, self.t >= self.steps, False, {}


if TOY_ID not in gym.registry:
    gym.register(id=TOY_ID, entry_point=ToyImageEnv)


class _FixedSpaceEnv(gym.Env):
    def __init__(self, space: gym.Space):
        self.observation_space = space
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


# -- the conversion --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,channels_first",
    [
        ((3, 96, 96), True),
        ((1, 10, 10), True),
        ((4, 84, 84), True),
        ((210, 160, 3), False),
        ((10, 10, 4), False),  # MinAtar Breakout
        ((10, 10, 10), False),  # MinAtar Seaquest: a tie goes channels-last
        ((84, 84, 1), False),
        ((5, 5, 5), False),
    ],
)
def test_layout_rule(shape, channels_first):
    assert image_is_channels_first(shape) is channels_first


def test_hwc_bool_becomes_chw_uint8():
    env = ChannelsFirstUint8(ToyImageEnv(dtype="bool"))
    assert env.observation_space == gym.spaces.Box(0, 255, (2, 6, 7), np.uint8)
    obs, _ = env.reset(seed=0)
    raw = env.unwrapped._obs()
    assert obs.shape == (2, 6, 7) and obs.dtype == np.uint8 and obs.flags.c_contiguous
    np.testing.assert_array_equal(obs, raw.transpose(2, 0, 1).astype(np.uint8) * 255)
    assert set(np.unique(obs)) <= {0, 255}
    obs, *_ = env.step(2)
    assert env.observation_space.contains(obs)


def test_float_becomes_rounded_uint8():
    env = ChannelsFirstUint8(ToyImageEnv(dtype="float32"))
    obs, _ = env.reset(seed=1)
    raw = env.unwrapped._obs()
    np.testing.assert_array_equal(obs, np.rint(raw.transpose(2, 0, 1) * 255).astype(np.uint8))
    assert set(np.unique(obs)) == {0, 128, 255}  # 0.5 -> round(127.5) = 128
    # Values slightly outside [0, 1] (float noise) are clipped, not wrapped around.
    frame = np.array([[[-1e-6, 0.2], [1.0000001, 1 / 255]]], np.float64)  # (1, 2, 2) CHW
    np.testing.assert_array_equal(
        to_channels_first_uint8(frame), np.array([[[0, 51], [255, 1]]], np.uint8)
    )


def test_uint8_layouts_and_2d_frames():
    hwc = ChannelsFirstUint8(ToyImageEnv(dtype="uint8"))
    obs, _ = hwc.reset(seed=2)
    np.testing.assert_array_equal(obs, hwc.unwrapped._obs().transpose(2, 0, 1))

    chw_space = gym.spaces.Box(0, 255, (3, 8, 9), np.uint8)
    chw = ChannelsFirstUint8(_FixedSpaceEnv(chw_space))
    assert chw.observation_space == chw_space
    frame = chw_space.sample()
    assert chw.observation(frame) is frame or np.array_equal(chw.observation(frame), frame)

    gray = ChannelsFirstUint8(_FixedSpaceEnv(gym.spaces.Box(0.0, 1.0, (5, 6), np.float32)))
    assert gray.observation_space.shape == (1, 5, 6)
    frame = np.full((5, 6), 0.25, np.float32)
    np.testing.assert_array_equal(gray.observation(frame), np.full((1, 5, 6), 64, np.uint8))

    # An explicit layout overrides the rule (a channels-first (16, 8, 8) stack).
    stack = ChannelsFirstUint8(
        _FixedSpaceEnv(gym.spaces.Box(0, 255, (16, 8, 8), np.uint8)), channels_first=True
    )
    assert stack.observation_space.shape == (16, 8, 8)


@pytest.mark.parametrize(
    "space,match",
    [
        (gym.spaces.Box(0.0, 255.0, (8, 8, 3), np.float32), r"\[0, 1\]"),
        (gym.spaces.Box(-np.inf, np.inf, (8, 8, 3), np.float32), r"\[0, 1\]"),
        (gym.spaces.Box(0, 255, (8, 8, 3), np.int32), "uint8, bool, or float"),
        (gym.spaces.Box(0, 1, (4,), np.float32), r"\(H, W\), \(H, W, C\) or \(C, H, W\)"),
        (gym.spaces.Box(0, 1, (2, 3, 4, 5), np.float32), r"\(H, W\), \(H, W, C\) or \(C, H, W\)"),
        (gym.spaces.Discrete(3), "Box image observation space"),
    ],
)
def test_unsupported_spaces_name_what_is_expected(space, match):
    with pytest.raises(ValueError, match=match):
        ChannelsFirstUint8(_FixedSpaceEnv(space))


def test_env_creator_wraps_images_only():
    env = make_gym_env(TOY_ID, {"height": 5, "width": 9}, max_moves=4)
    assert isinstance(env, gym.wrappers.TimeLimit) and env.spec.max_episode_steps == 4
    assert env.observation_space == gym.spaces.Box(0, 255, (2, 5, 9), np.uint8)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 5, 9) and obs.dtype == np.uint8
    for _ in range(4):
        _, _, terminated, truncated, _ = env.step(1)
    assert truncated and not terminated  # the move cap, before the env's own 12 steps

    vector = make_gym_env("CartPole-v1", {}, max_moves=7)  # vectors pass untouched
    assert vector.observation_space.shape == (4,) and vector.observation_space.dtype == np.float32


def test_unsupported_image_env_fails_at_creation_with_the_expected_spaces():
    bad_id = "BarlowZeroTest/Int32Image-v0"
    if bad_id not in gym.registry:
        gym.register(
            id=bad_id,
            entry_point=lambda: _FixedSpaceEnv(gym.spaces.Box(0, 255, (8, 8, 3), np.int32)),
        )
    with pytest.raises(ValueError, match="uint8, bool, or float"):
        make_gym_env(bad_id, {}, max_moves=5)


# -- the representation of small images ----------------------------------------------------------


def test_downsampling_choice():
    assert DOWNSAMPLE_MIN_SIZE == 32
    assert choose_downsample((12, 96, 96)) and choose_downsample((3, 32, 32))
    assert choose_downsample((4, 64, 84))
    assert not choose_downsample((16, 10, 10))  # MinAtar, 4 stacked frames
    assert not choose_downsample((3, 31, 96))
    assert not choose_downsample((8,))


def test_small_image_through_the_representation():
    torch.manual_seed(0)
    frames = [to_channels_first_uint8(np.random.default_rng(i).random((10, 10, 4)) > 0.7)
              for i in range(3)]
    obs = torch.as_tensor(np.stack([np.concatenate([f, f]) for f in frames]))  # 2 stacked
    assert obs.shape == (3, 8, 10, 10) and obs.dtype == torch.uint8
    shape = tuple(obs.shape[1:])
    net = BarlowZeroNetwork(
        shape, 3, channels=8, reduced_channels_reward=2, reduced_channels_value=2,
        reduced_channels_policy=2, resnet_fc_reward_layers=(8,), resnet_fc_value_layers=(8,),
        resnet_fc_policy_layers=(8,), lstm_hidden_size=16, support_size=5, proj_hid=16,
        proj_out=16, pred_hid=8, pred_out=16, downsample=choose_downsample(shape),
    ).eval()
    assert net.latent_shape == (8, 10, 10)  # full resolution: no x1/16 down to 1x1
    with torch.no_grad():
        out = net.initial_inference(obs)
        rec = net.recurrent_inference(out.state, net.initial_lstm_state(3), torch.tensor([0, 1, 2]))
    assert out.state.shape == (3, 8, 10, 10) and rec.state.shape == (3, 8, 10, 10)
    assert out.policy_logits.shape == (3, 3) and torch.isfinite(rec.value_prefix).all()
    assert net.project(out.state).shape == (3, 16)


# -- MinAtar ---------------------------------------------------------------------------------------


def test_minatar_ids():
    assert is_minatar_env_id("MinAtar/Breakout-v1") and not is_minatar_env_id("Breakout-v1")
    assert not is_minatar_env_id(None)


def test_missing_minatar_names_the_install_command(monkeypatch):
    from rllib_barlowzero.experiments import UserError, check_env

    for key in [k for k in gym.registry if k.startswith("MinAtar/")]:
        monkeypatch.delitem(gym.registry, key)
    monkeypatch.setitem(sys.modules, "minatar", None)  # import minatar -> ImportError
    monkeypatch.setitem(sys.modules, "minatar.gym", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[minatar\]"'):
        register_minatar_envs("MinAtar/Breakout-v1")
    with pytest.raises(ImportError, match="MinAtar/Breakout-v1.*minatar"):
        register_env_with_move_cap("MinAtar/Breakout-v1", 100)
    with pytest.raises(UserError, match=r"experiment 'x': .*pip install -e \"\.\[minatar\]\""):
        check_env("MinAtar/Breakout-v1", "x")


def test_minatar_registers_on_first_use_and_becomes_uint8_frames():
    pytest.importorskip("minatar")
    register_minatar_envs()
    register_minatar_envs()  # once per process; no re-registration warnings
    env = make_gym_env("MinAtar/Breakout-v1", {}, max_moves=50)
    assert env.observation_space == gym.spaces.Box(0, 255, (4, 10, 10), np.uint8)
    assert env.action_space == gym.spaces.Discrete(3)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 10, 10) and obs.dtype == np.uint8 and set(np.unique(obs)) <= {0, 255}
    raw = env.unwrapped.game.state()
    np.testing.assert_array_equal(obs, raw.transpose(2, 0, 1).astype(np.uint8) * 255)
    seaquest = make_gym_env("MinAtar/Seaquest-v1", {"sticky_action_prob": 0.0}, max_moves=5)
    assert seaquest.observation_space.shape == (10, 10, 10)


def test_cli_accepts_minatar_ids():
    pytest.importorskip("minatar")
    from rllib_barlowzero.experiments import UserError, check_env

    check_env("MinAtar/SpaceInvaders-v1", "x")
    with pytest.raises(UserError, match="did you mean 'MinAtar/Breakout-v1'"):
        check_env("MinAtar/Breakot-v1", "x")


def test_yaml_experiment_with_a_minatar_env_passes_the_checks():
    pytest.importorskip("minatar")
    from rllib_barlowzero.experiments import make_experiment

    spec = {"run": "BarlowZero", "env": "MinAtar/Breakout-v1", "stop": {"training_iteration": 1},
            "config": {"env_config": {"sticky_action_prob": 0.0}, "max_moves": 100}}
    assert make_experiment("minatar", spec).config["env"] == "MinAtar/Breakout-v1"


# -- whole algorithm -------------------------------------------------------------------------------

TINY = dict(
    MICRO_NETWORK, num_simulations=4, batch_size=8, history_length=20,
    num_steps_sampled_before_learning_starts=40, replay_ratio=0.05, training_steps=100,
    stacked_observations=2, max_moves=60,
)


def tiny_config(env: str, **training) -> BarlowZeroConfig:
    return (
        BarlowZeroConfig()
        .environment(env)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2, rollout_fragment_length=20)
        .training(**{**TINY, **training})
        .evaluation(evaluation_duration=2, evaluation_num_env_runners=0)
        .debugging(seed=0)
    )


def _train_evaluate_checkpoint(config: BarlowZeroConfig, frame: tuple[int, int, int], tmp_path):
    from ray.rllib.algorithms.algorithm import Algorithm

    algo = config.build_algo()
    try:
        module = algo.env_runner.module
        space = module.observation_space
        c, h, w = frame
        assert space.shape == (2 * c, h, w) and space.dtype == np.uint8  # 2 stacked frames
        assert module.network.latent_shape == (8, h, w)  # stride-1 representation
        results = [algo.train() for _ in range(2)]
        assert results[-1]["training_steps_done"] > 0
        assert np.isfinite(results[-1]["learners"]["default_policy"]["total_loss"])
        evaluation = algo.evaluate()["env_runners"]
        assert evaluation["num_episodes"] >= 1 and evaluation["episode_len_mean"] <= 60
        path = algo.save_to_path(str(tmp_path / "checkpoint"))
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path)
    try:
        assert restored.env_runner.module.observation_space.shape == (2 * c, h, w)
        assert restored._training_steps_done == results[-1]["training_steps_done"]
    finally:
        restored.stop()


def test_toy_channels_last_bool_env_trains_evaluates_checkpoints(ray_session, tmp_path):
    _train_evaluate_checkpoint(tiny_config(TOY_ID), (2, 6, 7), tmp_path)


def test_minatar_breakout_trains_evaluates_checkpoints(ray_session, tmp_path):
    pytest.importorskip("minatar")
    _train_evaluate_checkpoint(tiny_config("MinAtar/Breakout-v1"), (4, 10, 10), tmp_path)
