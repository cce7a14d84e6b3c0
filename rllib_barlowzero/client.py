"""Client of the BarlowZero Serve endpoint (`rllib_barlowzero.serve`), and a game player.

    python -m rllib_barlowzero.client http://127.0.0.1:8000 --env CartPole-v1 --episodes 2

`play` plays through a server session: it sends one env frame per step with a session id
(``"reset": true`` with each episode's first frame), and the server stacks the frames exactly
like the env runners do (`rllib_barlowzero.env.stack_frames`: n frames, oldest first, the
episode's first frame repeated before its start). A server that keeps no sessions
(``max_sessions=0``, e.g. for several replicas, or an RLModule directory served without
``num_frames``) gets the stacked observation instead, stacked here the same way. Observations
travel compactly: uint8 arrays (images) as base64, others as nested lists.
"""

from __future__ import annotations

import argparse
import base64
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from rllib_barlowzero.env import atari_env_creator, is_atari_env_id, make_gym_env, stack_frames

__all__ = ["BarlowZeroClient", "BarlowZeroServerError", "encode_observation", "main", "play"]


class BarlowZeroServerError(RuntimeError):
    """The endpoint answered with an HTTP error; `status` and the JSON `payload` say why."""

    def __init__(self, status: int, payload: Any) -> None:
        message = payload.get("error") if isinstance(payload, dict) else payload
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.payload = payload


def encode_observation(observation: Any) -> Any:
    """The JSON form of an observation (stacked, or one frame): base64 for uint8 arrays (the
    compact form for images), else nested lists."""
    array = np.asarray(observation)
    if array.dtype == np.uint8:
        return {
            "base64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii"),
            "shape": list(array.shape),
            "dtype": "uint8",
        }
    return array.tolist()


class BarlowZeroClient:
    """Talks to a BarlowZero endpoint at `url` (e.g. ``http://127.0.0.1:8000``)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def health(self) -> dict[str, Any]:
        """`GET /healthz`: the expected observation shape/dtype, number of actions, counters."""
        return self._request("GET", "/healthz")

    def act(
        self, observation: Any, *, session: str | None = None, reset: bool = False
    ) -> dict[str, Any]:
        """`POST /act` with one stacked observation, or with `session` one frame of it.

        With `session`, the server stacks the session's frames; `reset` (send it with an
        episode's first frame) restarts the session.

        Returns:
            {"action": int, "visit_counts": [int] * A, "root_value": float} (a Gumbel model adds
            "improved_policy": [float] * A), and for a session also {"session": str,
            "new_session": bool, "step": int, "frames": int}.

        Raises:
            BarlowZeroServerError: on a 4xx/5xx answer.
        """
        payload: dict[str, Any] = {"observation": encode_observation(observation)}
        if session is not None:
            payload["session"] = session
            payload["reset"] = bool(reset)
        elif reset:
            raise ValueError("reset=True needs a session")
        return self._request("POST", "/act", payload)

    def _request(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                detail = json.loads(body)
            except ValueError:
                detail = body.decode("utf-8", "replace")
            raise BarlowZeroServerError(e.code, detail) from None


def play(
    url: str,
    env_id: str,
    episodes: int = 1,
    *,
    seed: int | None = None,
    max_steps: int | None = None,
    env_config: Mapping[str, Any] | None = None,
    client: BarlowZeroClient | None = None,
) -> list[float]:
    """Plays `episodes` games of `env_id` with the endpoint choosing every action.

    Atari ids go through the Atari pipeline with `training=False` (whole games, raw scores),
    other ids through `make_gym_env` (images as channels-first uint8 frames, as in training).
    `env_config` (Atari only) takes the training run's Atari settings (e.g.
    `{"fire_on_life_start": True}`) so that the games are the ones the model was evaluated on.
    `max_steps` (optional) cuts an episode short. When the server keeps sessions, every step
    sends one frame in a session of this call's own (a fresh id, reset at each episode start);
    else it sends the stacked observation (see the module docstring).

    Returns:
        The return (sum of rewards) of each episode.

    Raises:
        RuntimeError: if the server lost the session mid-episode (evicted: its idle timeout or
            session cap), since the stacked frames would no longer be the episode's.
    """
    if env_config and {"env_id", "training"} & set(env_config):
        raise ValueError("env_config: 'env_id' and 'training' are set by play (its games are "
                         "evaluation games of `env_id`)")
    client = client or BarlowZeroClient(url)
    info = client.health()
    expected_shape = tuple(info["observation_shape"])
    expected_dtype = np.dtype(info["observation_dtype"])
    sessions = info.get("sessions")
    use_sessions = isinstance(sessions, dict) and bool(sessions.get("enabled"))
    if is_atari_env_id(env_id):
        env = atari_env_creator({**(env_config or {}), "env_id": env_id, "training": False})
    elif env_config:
        raise ValueError(f"env_config is for Atari ids only; {env_id} is not one")
    else:
        env = make_gym_env(env_id)
    try:
        frame_shape = tuple(env.observation_space.shape) or (1,)
        if use_sessions:
            server_frame_shape = tuple(info["frame_shape"])
            if frame_shape != server_frame_shape:
                raise ValueError(
                    f"{env_id} frames have shape {list(frame_shape)}, but the model takes frames "
                    f"of shape {list(server_frame_shape)}"
                )
            session_id = f"play-{uuid.uuid4().hex}"
        else:
            num_frames = _num_frames(frame_shape, expected_shape, env_id)
        returns = []
        for episode in range(episodes):
            frame, _ = env.reset(seed=None if seed is None else seed + episode)
            frames = [np.asarray(frame)]
            total, steps, done = 0.0, 0, False
            while not done and (max_steps is None or steps < max_steps):
                if use_sessions:
                    one = np.asarray(frame).astype(expected_dtype).reshape(frame_shape)
                    answer = client.act(one, session=session_id, reset=steps == 0)
                    if steps > 0 and answer.get("new_session"):
                        raise RuntimeError(
                            f"the server evicted session {session_id!r} mid-episode (step "
                            f"{steps}; its idle timeout or session cap): its frames are lost"
                        )
                else:
                    window = np.stack(frames[-num_frames:]).reshape(-1, *frame_shape)
                    answer = client.act(
                        stack_frames(window, len(window) - 1, num_frames).astype(expected_dtype)
                    )
                frame, reward, terminated, truncated, _ = env.step(answer["action"])
                if not use_sessions:
                    frames = [*frames, np.asarray(frame)][-num_frames:]
                total += float(reward)
                steps += 1
                done = terminated or truncated
            returns.append(total)
        return returns
    finally:
        env.close()


def _num_frames(frame_shape: tuple[int, ...], expected_shape: tuple[int, ...], env_id: str) -> int:
    """How many env frames the model stacks (on axis 0)."""
    if (
        len(frame_shape) == len(expected_shape)
        and frame_shape[1:] == expected_shape[1:]
        and expected_shape[0] % frame_shape[0] == 0
    ):
        return expected_shape[0] // frame_shape[0]
    raise ValueError(
        f"{env_id} frames have shape {list(frame_shape)}, which does not stack into the model's "
        f"observation shape {list(expected_shape)}"
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: play games against an endpoint and print the returns."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="endpoint base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--env", default="CartPole-v1", help="gymnasium or ALE env id")
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--env-config", type=json.loads, default=None,
                        help='Atari settings of the training run as JSON, e.g. '
                             '\'{"fire_on_life_start": true}\'')
    args = parser.parse_args(argv)
    returns = play(args.url, args.env, args.episodes, seed=args.seed, max_steps=args.max_steps,
                   env_config=args.env_config)
    for i, value in enumerate(returns):
        print(f"episode {i}: return {value:g}")
    print(f"mean return over {len(returns)} episodes: {float(np.mean(returns)):g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
