"""MinAtar ids (``MinAtar/Breakout-v1``, ...): registered with gymnasium on first use.

The ``minatar`` package is an optional extra (``pip install -e ".[minatar]"``). Its gymnasium
envs (``minatar.gym``) are not registered on import; :func:`register_minatar_envs` does it once
per process, the first time a ``MinAtar/`` id is used (by the algorithm's env creator on every env
runner, and by the command line's pre-flight checks). Without the package it raises an
``ImportError`` that says how to install it.

MinAtar observations are (10, 10, n_channels) bool (channels-last, n_channels 4..10); the generic
image path (``rllib_barlowzero.env.image``) turns them into (n_channels, 10, 10) uint8 frames.
Ids: ``MinAtar/{Asterix,Breakout,Freeway,Seaquest,SpaceInvaders}-v1`` (minimal action sets) and
``-v0`` (all 6 actions). ``env_config`` goes to the game, e.g. ``sticky_action_prob`` (0.1) and
``difficulty_ramping`` (True).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

__all__ = ["MINATAR_PREFIX", "is_minatar_env_id", "register_minatar_envs"]

MINATAR_PREFIX = "MinAtar/"
INSTALL_HINT = 'pip install -e ".[minatar]" (or: pip install minatar)'


def is_minatar_env_id(env_id: Any) -> bool:
    """True for a string id in MinAtar's namespace (``MinAtar/...``)."""
    return isinstance(env_id, str) and env_id.startswith(MINATAR_PREFIX)


def _registered() -> bool:
    return any(key.startswith(MINATAR_PREFIX) for key in gym.registry)


def register_minatar_envs(env_id: str | None = None) -> None:
    """Registers MinAtar's gymnasium ids in this process (once; later calls do nothing).

    Raises ``ImportError`` naming the install command when ``minatar`` is not installed
    (``env_id``, if given, is named in the message).
    """
    if _registered():
        return
    try:
        import minatar.gym as minatar_gym
    except ImportError as e:
        what = f"env '{env_id}'" if env_id else "MinAtar envs"
        raise ImportError(
            f"{what} needs the optional 'minatar' package, which is not installed: {INSTALL_HINT}"
        ) from e
    if not _registered():  # a later minatar may register on import
        minatar_gym.register_envs()
