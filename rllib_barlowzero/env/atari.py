"""EfficientZero-style Atari preprocessing for any ALE environment id.

Pipeline (innermost first), one agent step = ``frame_skip`` raw ALE frames::

    AtariEnv(frameskip=1, repeat_action_probability=0.0)     raw RGB [210, 160, 3] uint8
    -> NoopReset(noop_max)        1..noop_max raw NOOP frames after each real reset
    -> MaxPoolFrameSkip(skip)     repeat the action, sum rewards, max over last 2 raw frames
    -> FireOnLifeStart            (only with fire_on_life_start) FIRE after a reset or lost life
    -> ResizeRGB(frame_size)      cv2 INTER_AREA -> [3, frame_size, frame_size] uint8
    -> TimeLimit(max_moves)       truncation after ``max_moves`` agent steps of one game
    -> EpisodicLife               (training only) a lost life ends the episode
    -> TransformReward(sign)      (training only) rewards clipped to their sign

Decisions (following EfficientZero's ``make_atari`` + ``EpisodicLifeEnv`` + ``WarpFrame``):

* No FIRE-on-reset by default: EfficientZero does not use ``FireResetEnv``; the agent learns to
  fire. ``fire_on_life_start=True`` (a deviation, for short runs) serves the ball itself: one
  FIRE agent step after every reset and every lost life, in training and evaluation alike (a
  greedy agent that never learned FIRE otherwise waits at the move cap; the 2026-12-02 Breakout
  hour did). Those FIRE steps are not moves of the agent and do not count toward ``max_moves``.
* The no-op count is drawn from the base env's ``np_random`` (seeded by ``reset(seed=...)``);
  it can be forced with ``reset(options={"noops": k})`` and is reported as ``info["noops"]``.
* ``max_moves`` counts the agent steps of a whole game: like in EfficientZero the time limit sits
  below the episodic-life wrapper, so in training a game split into several life-episodes is
  capped as a whole (the no-op step that starts the next life counts as one move).
* Every step's ``info`` carries ``raw_reward`` (unclipped sum over the skipped frames) and
  ``lives``; training-mode infos also carry ``game_over`` (the real game ended).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from gymnasium.wrappers import TimeLimit, TransformReward

__all__ = [
    "ATARI_ENV_CONFIG_KEYS",
    "EpisodicLife",
    "FireOnLifeStart",
    "MaxPoolFrameSkip",
    "NoopReset",
    "ResizeRGB",
    "atari_env_creator",
    "is_atari_env_id",
    "make_atari_env",
]

NOOP_ACTION = 0  # ALE: action 0 is NOOP in both the minimal and the full action set.

#: Keys of an RLlib ``env_config`` understood by :func:`atari_env_creator`.
ATARI_ENV_CONFIG_KEYS = (
    "env_id",
    "training",
    "max_moves",
    "noop_max",
    "frame_skip",
    "frame_size",
    "full_action_space",
    "episodic_life",
    "clip_rewards",
    "fire_on_life_start",
    "seed",
)


def _lives(env: gym.Env) -> int:
    return int(env.unwrapped.ale.lives())


class NoopReset(gym.Wrapper):
    """After each real reset, take a random number (1..noop_max) of raw NOOP frames.

    The count comes from ``env.unwrapped.np_random`` (EfficientZero/baselines convention); pass
    ``reset(options={"noops": k})`` to force it. ``info["noops"]`` reports the count used.
    """

    def __init__(self, env: gym.Env, noop_max: int = 30):
        super().__init__(env)
        if noop_max < 0:
            raise ValueError(f"noop_max must be >= 0, got {noop_max}")
        self.noop_max = noop_max

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        forced = options.pop("noops", None)
        obs, info = self.env.reset(seed=seed, options=options or None)
        if forced is not None:
            if int(forced) < 0:
                raise ValueError(f"options['noops'] must be >= 0, got {forced}")
            noops = int(forced)
        elif self.noop_max > 0:
            noops = int(self.env.unwrapped.np_random.integers(1, self.noop_max + 1))
        else:
            noops = 0
        for _ in range(noops):
            obs, _, terminated, truncated, info = self.env.step(NOOP_ACTION)
            if terminated or truncated:
                obs, info = self.env.reset()
        info = dict(info)
        info["noops"] = noops
        return obs, info


class MaxPoolFrameSkip(gym.Wrapper):
    """Repeat the action ``skip`` raw frames (stopping early at the game's end).

    Reward: sum of the raw rewards (also stored as ``info["raw_reward"]``). Observation:
    element-wise max of the last two raw frames of this step (the single frame if the step
    only lasted one frame). The reset observation is the last raw frame.
    """

    def __init__(self, env: gym.Env, skip: int = 4):
        super().__init__(env)
        if skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {skip}")
        self.skip = skip

    def step(self, action):
        total = 0.0
        prev = obs = None
        terminated = truncated = False
        info: dict[str, Any] = {}
        for _ in range(self.skip):
            prev = obs
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        if prev is not None:
            obs = np.maximum(prev, obs)
        info = dict(info)
        info["raw_reward"] = total
        return obs, total, terminated, truncated, info


class FireOnLifeStart(gym.Wrapper):
    """Presses FIRE for one agent step at the start of every life: after each reset and right
    after each step that loses a life (games such as Breakout wait for FIRE to serve the ball).

    The FIRE step after a reset drops its reward, like the no-ops; the one after a lost life adds
    its reward (and ``info["raw_reward"]``) to the step that lost the life. Raises ``ValueError``
    for a game without a FIRE action.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        if "FIRE" not in meanings:
            raise ValueError(
                f"fire_on_life_start: this game has no FIRE action (its actions: {meanings})"
            )
        self.fire_action = meanings.index("FIRE")
        self.lives = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        obs, _, terminated, truncated, step_info = self.env.step(self.fire_action)
        if terminated or truncated:  # pragma: no cover - a game does not end on its first FIRE
            obs, info = self.env.reset(options=options)
        else:
            info = {**info, **step_info}
        self.lives = _lives(self.env)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = _lives(self.env)
        if 0 < lives < self.lives and not (terminated or truncated):
            obs, fire_reward, terminated, truncated, fire_info = self.env.step(self.fire_action)
            reward = float(reward) + float(fire_reward)
            info = {**fire_info, "raw_reward": info["raw_reward"] + fire_info["raw_reward"]}
        self.lives = lives
        return obs, reward, terminated, truncated, info


class ResizeRGB(gym.ObservationWrapper):
    """[H, W, 3] uint8 -> [3, size, size] uint8 via ``cv2.resize(..., INTER_AREA)``."""

    def __init__(self, env: gym.Env, size: int = 96):
        super().__init__(env)
        shape = env.observation_space.shape
        if shape is None or len(shape) != 3 or shape[-1] != 3:
            raise ValueError(f"ResizeRGB needs RGB [H, W, 3] observations, got shape {shape}")
        self.size = size
        self.observation_space = gym.spaces.Box(0, 255, (3, size, size), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        frame = cv2.resize(observation, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(frame.transpose(2, 0, 1))


class EpisodicLife(gym.Wrapper):
    """A lost life terminates the episode; the real reset happens only at game over.

    A reset right after such a life-loss termination continues the same game with one NOOP
    agent step (its reward is dropped), as in baselines'/EfficientZero's ``EpisodicLifeEnv``.
    Every other reset (game over, truncation, mid-episode reset, explicit ``seed``) is a real
    reset. ``info["game_over"]`` tells whether the underlying game really ended.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self._continue_game = False

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        game_over = bool(terminated or truncated)
        lives = _lives(self.env)
        life_lost = 0 < lives < self.lives
        self.lives = lives
        self._continue_game = life_lost and not game_over
        info = dict(info)
        info["game_over"] = game_over
        return obs, reward, bool(terminated or life_lost), truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self._continue_game and seed is None:
            obs, _, terminated, truncated, info = self.env.step(NOOP_ACTION)
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        else:
            obs, info = self.env.reset(seed=seed, options=options)
        self._continue_game = False
        self.lives = _lives(self.env)
        info = dict(info)
        info["game_over"] = False
        return obs, info


def _sign(reward: float) -> float:
    return float(np.sign(reward))


def _strip_namespace_prefix(env_id: str) -> str:
    # gym.make accepts "module:EnvId"; only the ale_py module is relevant here.
    return env_id.split(":", 1)[1] if env_id.startswith("ale_py:") else env_id


def is_atari_env_id(env_id: str) -> bool:
    """True if ``env_id`` names an ALE environment (``ALE/X-v5``, ``XNoFrameskip-v4``, ...)."""
    if not isinstance(env_id, str):
        return False
    try:
        import ale_py

        gym.register_envs(ale_py)
    except ImportError:  # pragma: no cover - ale-py is a dependency
        return False
    spec = gym.registry.get(_strip_namespace_prefix(env_id))
    return spec is not None and "ale_py" in str(spec.entry_point)


def make_atari_env(
    env_id: str,
    *,
    training: bool = True,
    max_moves: int = 3000,
    noop_max: int = 30,
    frame_skip: int = 4,
    frame_size: int = 96,
    full_action_space: bool = False,
    episodic_life: bool | None = None,
    clip_rewards: bool | None = None,
    fire_on_life_start: bool = False,
    seed: int | None = None,
) -> gym.Env:
    """Build EfficientZero's Atari pipeline; observations are uint8 [3, frame_size, frame_size].

    ``episodic_life`` and ``clip_rewards`` default to ``training``. ``seed`` (optional) seeds
    the first reset that is called without a seed, and the action space.
    ``fire_on_life_start`` adds :class:`FireOnLifeStart` (off by default, as in EfficientZero).
    """
    if frame_size < 8:
        raise ValueError(f"frame_size must be >= 8, got {frame_size}")
    if noop_max < 0:
        raise ValueError(f"noop_max must be >= 0, got {noop_max}")
    if frame_skip < 1:
        raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
    if max_moves < 1:
        raise ValueError(f"max_moves must be >= 1, got {max_moves}")
    if not isinstance(fire_on_life_start, bool):
        raise ValueError(f"fire_on_life_start must be true or false, got {fire_on_life_start!r}")
    if not is_atari_env_id(env_id):
        raise ValueError(
            f"env_id {env_id!r} is not a known ALE (Atari) environment id; expected e.g. "
            "'ALE/Breakout-v5' or 'BreakoutNoFrameskip-v4'"
        )
    episodic_life = training if episodic_life is None else episodic_life
    clip_rewards = training if clip_rewards is None else clip_rewards

    try:
        env = gym.make(
            _strip_namespace_prefix(env_id),
            frameskip=1,
            repeat_action_probability=0.0,
            full_action_space=full_action_space,
        )
    except gym.error.Error as e:
        raise ValueError(f"Could not create ALE environment {env_id!r}: {e}") from e
    meanings = env.unwrapped.get_action_meanings()
    if meanings[NOOP_ACTION] != "NOOP":  # pragma: no cover - guaranteed by ALE
        raise ValueError(f"{env_id}: action 0 is {meanings[0]!r}, expected 'NOOP'")

    env = NoopReset(env, noop_max=noop_max)
    env = MaxPoolFrameSkip(env, skip=frame_skip)
    if fire_on_life_start:
        env = FireOnLifeStart(env)
    env = ResizeRGB(env, size=frame_size)
    env = TimeLimit(env, max_episode_steps=max_moves)
    if episodic_life:
        env = EpisodicLife(env)
    if clip_rewards:
        env = TransformReward(env, _sign)
    if seed is not None:
        env = _SeedFirstReset(env, seed)
    return env


class _SeedFirstReset(gym.Wrapper):
    """Use ``seed`` for the first reset that gets none; also seeds the action space."""

    def __init__(self, env: gym.Env, seed: int):
        super().__init__(env)
        self._pending_seed: int | None = int(seed)
        self.action_space.seed(int(seed))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        else:
            self._pending_seed = None
        return self.env.reset(seed=seed, options=options)


def atari_env_creator(env_config: Mapping[str, Any]) -> gym.Env:
    """RLlib env creator: ``make_atari_env(**env_config)`` with ``env_config["env_id"]``.

    Accepted keys: :data:`ATARI_ENV_CONFIG_KEYS`; unknown keys raise ``ValueError``.
    """
    cfg = dict(env_config)
    unknown = sorted(set(cfg) - set(ATARI_ENV_CONFIG_KEYS))
    if unknown:
        raise ValueError(
            f"Unknown Atari env_config keys {unknown}; accepted: {list(ATARI_ENV_CONFIG_KEYS)}"
        )
    if "env_id" not in cfg:
        raise ValueError("Atari env_config needs 'env_id' (e.g. 'ALE/Breakout-v5')")
    return make_atari_env(cfg.pop("env_id"), **cfg)


