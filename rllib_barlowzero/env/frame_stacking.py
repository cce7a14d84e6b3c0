"""Frame stacking: the single definition of BarlowZero's stacked observation.

``stack_frames`` is used by the env runners (through ``FrameStackingEnvToModule``), by
reanalyze and the targets on replay windows (``per_row=True``), and by evaluation videos and the
client, so every side sees exactly the same network input:

    stacked(t) = concat(o_{t-n+1}, ..., o_t) along axis 0 (oldest first),
    with o_k := o_0 for k < 0 (EfficientZero repeats the episode's first frame).

Images [C, H, W] -> [n*C, H, W]; vectors [D] -> [n*D]; scalars [] -> [n].
Episodes keep single frames; only the module input is stacked.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.typing import EpisodeType

__all__ = ["FrameStackingEnvToModule", "stack_frames", "stacked_observation_space"]


def stack_frames(
    frames: np.ndarray, t: int | np.ndarray, n: int, *, per_row: bool = False
) -> np.ndarray:
    """Stack the ``n`` frames ending at index ``t`` of one episode (or of each row).

    Args:
        frames: [T, *F] the episode's single observations o_0..o_{T-1} (F = [C, H, W] or [D]
            or []); with ``per_row``, [B, T, *F]: one frame sequence per row (e.g. the replay
            windows of a batch, ``SampledWindows.frames``).
        t: index (or integer array of indices, any shape S) into ``frames``, 0 <= t < T; with
            ``per_row``, an int (the same index in every row) or an array [B, *S] (row b's
            indices into its own sequence).
        n: number of frames to stack (>= 1).

    Returns:
        [n*F0, *F[1:]] for an int ``t`` ([*S, n*F0, *F[1:]] for an array ``t``); for scalar
        frames ([T]) it is [n] ([*S, n]). With ``per_row``: [B, *S, n*F0, *F[1:]]. Frames
        before the sequence start repeat its first frame.
    """
    if n < 1:
        raise ValueError(f"n (number of frames) must be >= 1, got {n}")
    frames = np.asarray(frames)
    time_axis = 1 if per_row else 0
    if frames.ndim <= time_axis or frames.shape[time_axis] < 1:
        expected = "[B, T, ...]" if per_row else "[T, ...]"
        raise ValueError(f"frames must be {expected} with T >= 1, got shape {frames.shape}")
    t_arr = np.asarray(t)
    if not np.issubdtype(t_arr.dtype, np.integer):
        raise TypeError(f"t must be an integer or integer array, got dtype {t_arr.dtype}")
    length = frames.shape[time_axis]
    if t_arr.size and (t_arr.min() < 0 or t_arr.max() >= length):
        raise IndexError(f"t out of range [0, {length - 1}]: min {t_arr.min()}, max {t_arr.max()}")
    if per_row:
        rows = frames.shape[0]
        if t_arr.ndim == 0:
            t_arr = np.full(rows, int(t_arr))
        if t_arr.shape[0] != rows:
            raise ValueError(f"t: expected an int or an array [{rows}, ...], got {t_arr.shape}")
    idx = np.maximum(t_arr[..., None] + np.arange(1 - n, 1), 0)  # [*S, n] ([B, *S, n])
    if per_row:
        out = frames[np.arange(rows).reshape((rows,) + (1,) * (idx.ndim - 1)), idx]
    else:
        out = frames[idx]  # [*S, n, *F]
    lead = t_arr.shape
    frame_shape = frames.shape[time_axis + 1:]
    if not frame_shape:
        return np.ascontiguousarray(out)  # [*S, n]
    return out.reshape(lead + (n * frame_shape[0],) + frame_shape[1:])


def stacked_observation_space(space: gym.Space, n: int) -> gym.spaces.Box:
    """Box [*F] -> Box [n*F0, *F[1:]] (bounds repeated along axis 0); n=1 returns ``space``."""
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"frame stacking needs a Box observation space, got {space}")
    if n == 1:
        return space
    if len(space.shape) == 0:
        low, high = np.full(n, space.low), np.full(n, space.high)
    else:
        low = np.concatenate([space.low] * n, axis=0)
        high = np.concatenate([space.high] * n, axis=0)
    return gym.spaces.Box(low=low, high=high, dtype=space.dtype)


class FrameStackingEnvToModule(ConnectorV2):
    """Env-to-module connector writing ``stack_frames(episode_frames, t, num_frames)`` to OBS.

    For every (single-agent) episode it adds the stacked observation of the episode's latest
    frame to ``batch["obs"]``, so RLlib's default ``AddObservationsFromEpisodesToBatch``
    (which skips when OBS is already present) is bypassed; batching/tensor conversion stay
    with the default pieces that follow. Channels-first images and vectors are supported.

    The env runner must keep ``num_frames - 1`` past frames in continued episode chunks:
    ``config.env_runners(episode_lookback_horizon=num_frames - 1)`` (or more); otherwise a
    ``ValueError`` is raised instead of silently mis-stacking.
    """

    def __init__(
        self,
        input_observation_space: gym.Space | None = None,
        input_action_space: gym.Space | None = None,
        *,
        num_frames: int = 4,
        **kwargs: Any,
    ):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = int(num_frames)
        super().__init__(
            input_observation_space=input_observation_space,
            input_action_space=input_action_space,
            **kwargs,
        )

    def recompute_output_observation_space(
        self, input_observation_space: gym.Space, input_action_space: gym.Space
    ) -> gym.Space:
        return stacked_observation_space(input_observation_space, self.num_frames)

    def __call__(
        self,
        *,
        rl_module: RLModule,
        batch: dict[str, Any],
        episodes: list[EpisodeType],
        explore: bool | None = None,
        shared_data: dict | None = None,
        **kwargs: Any,
    ) -> Any:
        n = self.num_frames
        if n == 1:
            return batch  # the default AddObservationsFromEpisodesToBatch adds single frames
        for episode in self.single_agent_episode_iterator(episodes):
            # Up to n most recent frames, reaching into the chunk's lookback buffer.
            window = episode.get_observations(slice(-n, None))
            first_global_t = episode.t - (len(window) - 1)
            if len(window) < n and first_global_t > 0:
                raise ValueError(
                    f"Frame stacking of {n} frames needs {n - 1} past frames, but the episode "
                    f"chunk only holds {len(window) - 1}; set "
                    f"config.env_runners(episode_lookback_horizon={n - 1}) or larger."
                )
            frames = np.stack(window, axis=0)
            self.add_batch_item(
                batch=batch,
                column=Columns.OBS,
                item_to_add=stack_frames(frames, len(window) - 1, n),
                single_agent_episode=episode,
            )
        return batch
