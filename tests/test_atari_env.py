"""Tests for the EfficientZero-style Atari pipeline (rllib_barlowzero.env.atari)."""

from __future__ import annotations

import cv2
import gymnasium as gym
import numpy as np
import pytest

from rllib_barlowzero.env.atari import (
    ATARI_ENV_CONFIG_KEYS,
    atari_env_creator,
    is_atari_env_id,
    make_atari_env,
)

ale_py = pytest.importorskip("ale_py")
gym.register_envs(ale_py)

BREAKOUT_IDS = ["BreakoutNoFrameskip-v4", "ALE/Breakout-v5"]


def _raw_env(env_id: str) -> gym.Env:
    return gym.make(env_id, frameskip=1, repeat_action_probability=0.0)


def _by_hand(frame: np.ndarray, size: int = 96) -> np.ndarray:
    """[210, 160, 3] -> [3, size, size] exactly as EfficientZero's WarpFrame (RGB)."""
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)


def _actions(n: int, seed: int = 0, num_actions: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_actions, size=n)


@pytest.mark.parametrize("env_id", BREAKOUT_IDS + ["ale_py:ALE/Breakout-v5"])
def test_spaces_and_dtype(env_id):
    env = make_atari_env(env_id)
    assert env.observation_space == gym.spaces.Box(0, 255, (3, 96, 96), np.uint8)
    assert env.action_space == gym.spaces.Discrete(4)
    obs, info = env.reset(seed=0)
    assert obs.shape == (3, 96, 96) and obs.dtype == np.uint8 and obs.flags.c_contiguous
    assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(1)
    assert env.observation_space.contains(obs)
    assert isinstance(reward, float) and "raw_reward" in info and "lives" in info

    small = make_atari_env(env_id, frame_size=84, full_action_space=True)
    assert small.observation_space.shape == (3, 84, 84)
    assert small.action_space == gym.spaces.Discrete(18)
    assert small.reset(seed=0)[0].shape == (3, 84, 84)


@pytest.mark.parametrize("env_id", BREAKOUT_IDS)
@pytest.mark.parametrize("frame_skip", [4, 3])
def test_preprocessing_matches_raw_ale_by_hand(env_id, frame_skip):
    seed = 7
    env = make_atari_env(env_id, training=False, frame_skip=frame_skip, max_moves=10_000)
    raw = _raw_env(env_id)

    obs, info = env.reset(seed=seed)
    raw_obs, _ = raw.reset(seed=seed)
    # The no-op count is drawn from the base env's np_random right after the seeded reset.
    assert info["noops"] == int(raw.unwrapped.np_random.integers(1, 31))
    for _ in range(info["noops"]):
        raw_obs, *_ = raw.step(0)
    np.testing.assert_array_equal(obs, _by_hand(raw_obs))

    total_raw = 0.0
    terminated = truncated = False
    steps = 0
    for action in _actions(600, seed=3):
        obs, reward, terminated, truncated, info = env.step(int(action))
        frames, r_sum, done = [], 0.0, False
        for _ in range(frame_skip):
            f, r, te, tr, _ = raw.step(int(action))
            frames.append(f.copy())
            r_sum += r
            if te or tr:
                done = True
                break
        pooled = np.maximum(frames[-2], frames[-1]) if len(frames) > 1 else frames[-1]
        np.testing.assert_array_equal(obs, _by_hand(pooled), err_msg=f"step {steps}")
        assert reward == r_sum == info["raw_reward"]
        assert info["lives"] == raw.unwrapped.ale.lives()
        assert (terminated or truncated) == done
        total_raw += r_sum
        steps += 1
        if terminated or truncated:
            break
    assert total_raw > 0, "random play should score in Breakout"
    assert terminated and info["lives"] == 0  # evaluation: the whole game was played


def test_forced_noops_and_seeding():
    env = make_atari_env("ALE/Breakout-v5", training=False)
    obs, info = env.reset(seed=3, options={"noops": 0})
    assert info["noops"] == 0
    raw = _raw_env("ALE/Breakout-v5")
    raw_obs, _ = raw.reset(seed=3)
    np.testing.assert_array_equal(obs, _by_hand(raw_obs))
    obs, info = env.reset(options={"noops": 5})
    assert info["noops"] == 5 and info["episode_frame_number"] == 5

    # noop_max=0: no no-ops.
    env0 = make_atari_env("ALE/Breakout-v5", noop_max=0)
    assert env0.reset(seed=1)[1]["noops"] == 0

    # Same constructor seed -> same no-op counts and observations.
    a, b = make_atari_env("ALE/Breakout-v5", seed=11), make_atari_env("ALE/Breakout-v5", seed=11)
    for _ in range(3):
        (oa, ia), (ob, ib) = a.reset(), b.reset()
        assert ia["noops"] == ib["noops"]
        np.testing.assert_array_equal(oa, ob)
    assert a.action_space.sample() == b.action_space.sample()


def test_reward_sign_clipping_only_when_training():
    env_id = "ALE/SpaceInvaders-v5"  # rewards 5..30 per invader: clipping is visible
    acts = _actions(300, seed=2, num_actions=6)
    for training, clip in [(True, None), (False, None), (True, False), (False, True)]:
        env = make_atari_env(env_id, training=training, clip_rewards=clip, episodic_life=False)
        env.reset(seed=0)
        seen_big = False
        for a in acts:
            _, reward, terminated, truncated, info = env.step(int(a))
            raw = info["raw_reward"]
            seen_big |= raw > 1
            clipped = training if clip is None else clip
            assert reward == (np.sign(raw) if clipped else raw)
            if terminated or truncated:
                break
        assert seen_big


def _play_until(env, predicate, actions):
    for t, a in enumerate(actions):
        out = env.step(int(a))
        if predicate(*out):
            return t, out
    raise AssertionError("condition never reached")


def test_life_loss_ends_episode_only_in_training():
    acts = _actions(5000, seed=3)
    train = make_atari_env("BreakoutNoFrameskip-v4", training=True, max_moves=10_000)
    _, info = train.reset(seed=0)
    assert info["lives"] == 5
    t1, (_, _, terminated, truncated, info) = _play_until(
        train, lambda o, r, te, tr, i: te or tr, acts
    )
    assert terminated and not truncated
    assert info["lives"] == 4 and not info["game_over"]
    frame_at_loss = info["episode_frame_number"]
    # The next reset continues the same game (one NOOP agent step), it is no real reset.
    _, info = train.reset()
    assert info["lives"] == 4 and info["episode_frame_number"] == frame_at_loss + 4
    # Play the remaining lives: each ends an episode; the last one is the real game over.
    lives_seen = [4]
    while True:
        _, (_, _, terminated, _, info) = _play_until(train, lambda o, r, te, tr, i: te or tr, acts)
        assert terminated
        lives_seen.append(info["lives"])
        if info["game_over"]:
            break
        train.reset()
    assert lives_seen == [4, 3, 2, 1, 0]
    _, info = train.reset()  # real reset now
    assert info["lives"] == 5 and info["episode_frame_number"] <= 30
    # A reset in the middle of a life (no life lost) is a real reset too.
    for a in acts[:20]:
        train.step(int(a))
    _, info = train.reset()
    assert "noops" in info and info["episode_frame_number"] <= 30

    # Evaluation: the game goes on through life losses; terminated only at game over.
    ev = make_atari_env("BreakoutNoFrameskip-v4", training=False, max_moves=10_000)
    ev.reset(seed=0)
    lives = [5]
    for a in acts:
        _, _, terminated, truncated, info = ev.step(int(a))
        assert not truncated
        if info["lives"] != lives[-1]:
            lives.append(info["lives"])
        if terminated:
            break
    assert terminated and lives == [5, 4, 3, 2, 1, 0]


def test_max_moves_truncation():
    acts = _actions(100, seed=4)
    for training in (True, False):
        env = make_atari_env("ALE/Breakout-v5", training=training, max_moves=12)
        env.reset(seed=0)
        for t, a in enumerate(acts[:12]):
            _, _, terminated, truncated, _ = env.step(int(a))
            assert not terminated
            assert truncated == (t == 11)
        # After truncation the next reset is a real one.
        _, info = env.reset()
        assert info["lives"] == 5 and info["episode_frame_number"] <= 30


def test_max_moves_counts_moves_of_the_whole_game_in_training():
    acts = _actions(5000, seed=3)
    probe = make_atari_env("BreakoutNoFrameskip-v4", training=True, max_moves=10_000)
    probe.reset(seed=0)
    t1, _ = _play_until(probe, lambda o, r, te, tr, i: te, acts)  # life lost at move t1 + 1
    env = make_atari_env("BreakoutNoFrameskip-v4", training=True, max_moves=t1 + 1 + 6)
    env.reset(seed=0)
    for a in acts[: t1 + 1]:
        _, _, terminated, truncated, _ = env.step(int(a))
    assert terminated and not truncated
    env.reset()  # one NOOP move to continue the game
    for k, a in enumerate(acts[t1 + 1 : t1 + 6]):
        _, _, terminated, truncated, info = env.step(int(a))
        assert truncated == (k == 4)
    assert info["game_over"]


def test_bad_arguments_name_the_argument():
    for kwargs, name in [
        ({"frame_size": 7}, "frame_size"),
        ({"noop_max": -1}, "noop_max"),
        ({"frame_skip": 0}, "frame_skip"),
        ({"max_moves": 0}, "max_moves"),
    ]:
        with pytest.raises(ValueError, match=name):
            make_atari_env("ALE/Breakout-v5", **kwargs)
    for bad_id in ["CartPole-v1", "ALE/NotAGame-v5", "Nonsense"]:
        with pytest.raises(ValueError, match="not a known ALE"):
            make_atari_env(bad_id)


def test_is_atari_env_id():
    for good in [
        "ALE/Breakout-v5",
        "BreakoutNoFrameskip-v4",
        "Breakout-v4",
        "ale_py:ALE/Pong-v5",
        "PongNoFrameskip-v4",
    ]:
        assert is_atari_env_id(good), good
    for bad in ["CartPole-v1", "ALE/NotAGame-v5", "Pendulum-v1", "", None]:
        assert not is_atari_env_id(bad), bad


def test_env_creator_and_registration():
    env = atari_env_creator({"env_id": "ALE/Breakout-v5", "training": False, "frame_size": 32})
    assert env.observation_space.shape == (3, 32, 32)
    assert "EpisodicLife" not in str(env) and "TransformReward" not in str(env)
    train = atari_env_creator({"env_id": "ALE/Breakout-v5"})
    assert "EpisodicLife" in str(train) and "TransformReward" in str(train)
    with pytest.raises(ValueError, match="frame_sz"):
        atari_env_creator({"env_id": "ALE/Breakout-v5", "frame_sz": 32})
    with pytest.raises(ValueError, match="env_id"):
        atari_env_creator({"training": False})
    assert set(ATARI_ENV_CONFIG_KEYS) >= {"env_id", "training", "max_moves"}

    env = atari_env_creator({"env_id": "ALE/Pong-v5", "training": False, "max_moves": 5})
    assert env.action_space.n == 6 and env.reset(seed=0)[0].shape == (3, 96, 96)


def _noop_game(env, max_steps: int = 10_000):
    """Plays NOOP until the real game ends or is cut; (moves, lives, truncated, life-episodes)."""
    env.reset(seed=0)
    moves, episodes = 0, 1
    while moves < max_steps:
        _, _, terminated, truncated, info = env.step(0)
        moves += 1
        if truncated or (terminated and info.get("game_over", True)):
            return moves, info["lives"], truncated, episodes
        if terminated:  # a lost life in training: the next reset continues the game
            episodes += 1
            env.reset()
    raise AssertionError("the game neither ended nor was cut")


@pytest.mark.parametrize("training", [False, True])
def test_fire_on_life_start_serves_every_ball(training):
    # Without FIRE, Breakout never serves: a NOOP agent waits at the move cap with 5 lives.
    off = make_atari_env("BreakoutNoFrameskip-v4", training=training, max_moves=600)
    assert _noop_game(off) == (600, 5, True, 1)
    # With it, every life's ball is served and missed: the game ends well before the cap.
    on = make_atari_env(
        "BreakoutNoFrameskip-v4", training=training, max_moves=600, fire_on_life_start=True
    )
    moves, lives, truncated, episodes = _noop_game(on)
    assert lives == 0 and not truncated and moves < 300
    assert episodes == (5 if training else 1)


def test_fire_on_life_start_equals_pressing_fire_by_hand():
    # The wrapper must be exactly an agent that presses FIRE after the reset (reward dropped)
    # and right after each move that loses a life (reward added to that move).
    acts = _actions(400, seed=5)
    on = make_atari_env("ALE/Breakout-v5", training=False, fire_on_life_start=True)
    by_hand = make_atari_env("ALE/Breakout-v5", training=False)
    obs_on, _ = on.reset(seed=3)
    by_hand.reset(seed=3)
    obs_hand, *_ = by_hand.step(1)
    lives, fires = 5, 0
    for a in acts:
        np.testing.assert_array_equal(obs_on, obs_hand)
        obs_on, r_on, te_on, tr_on, info_on = on.step(int(a))
        obs_hand, r_hand, te_hand, tr_hand, info_hand = by_hand.step(int(a))
        if 0 < info_hand["lives"] < lives and not (te_hand or tr_hand):
            obs_hand, r_fire, te_hand, tr_hand, fire_info = by_hand.step(1)
            r_hand += r_fire
            info_hand = {**fire_info, "raw_reward": info_hand["raw_reward"] + r_fire}
            fires += 1
        lives = info_hand["lives"]
        assert (r_on, te_on, tr_on) == (r_hand, te_hand, tr_hand)
        assert info_on["raw_reward"] == info_hand["raw_reward"]
        assert info_on["lives"] == info_hand["lives"]
        if te_on:
            break
    assert fires >= 1  # the case under test happened


def test_fire_on_life_start_errors_and_routing():
    with pytest.raises(ValueError, match="fire_on_life_start must be true or false"):
        make_atari_env("ALE/Breakout-v5", fire_on_life_start="yes")
    with pytest.raises(ValueError, match="no FIRE action"):
        make_atari_env("ALE/Freeway-v5", fire_on_life_start=True)
    assert "fire_on_life_start" in ATARI_ENV_CONFIG_KEYS
    env = atari_env_creator(
        {"env_id": "ALE/Breakout-v5", "training": False, "fire_on_life_start": True}
    )
    assert "FireOnLifeStart" in str(env)
    assert "FireOnLifeStart" not in str(atari_env_creator({"env_id": "ALE/Breakout-v5"}))
