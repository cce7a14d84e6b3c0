"""Env creator for gymnasium ids other than ALE: the move cap, and images made uint8 [C, H, W].

``make_gym_env(env_id, env_config, max_moves)`` is::

    gym.make(env_id, **env_config)
    -> ChannelsFirstUint8        only if the observation space is an image (a 2-D or 3-D Box)
    -> TimeLimit(max_moves)      on top of any limit of the env's own (none if max_moves is None)

Vector observations (1-D Box) and other spaces pass unchanged (the module names what it accepts).
``MinAtar/`` ids register on first use (``rllib_barlowzero.env.minatar_envs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym

from rllib_barlowzero.env.image import ChannelsFirstUint8, is_image_space
from rllib_barlowzero.env.minatar_envs import is_minatar_env_id, register_minatar_envs

__all__ = ["make_gym_env"]


def make_gym_env(
    env_id: str, env_config: Mapping[str, Any] | None = None, max_moves: int | None = None
) -> gym.Env:
    """``gym.make(env_id, **env_config)``, images made uint8 [C, H, W], cut at ``max_moves``
    agent steps (``None``: no cap of ours, e.g. for clients that count steps themselves)."""
    if is_minatar_env_id(env_id):
        register_minatar_envs(env_id)
    env = gym.make(env_id, **dict(env_config or {}))
    if is_image_space(env.observation_space):
        env = ChannelsFirstUint8(env)
    if max_moves is None:
        return env
    return gym.wrappers.TimeLimit(env, max_episode_steps=max_moves)
