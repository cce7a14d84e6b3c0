"""Client of the BarlowZero Serve endpoint (`rllib_barlowzero.serve`), and a game player.

    python -m rllib_barlowzero.client http://127.0.0.1:8000 --env CartPole-v1 --episodes 2

The client stacks frames itself exactly like the env runners do
(`rllib_barlowzero.env.stack_frames`): n = expected observation size / env frame size frames,
oldest first, the episode's first frame repeated before the start.
"""

from __future__ import annotations

import argparse
import base64
import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from rllib_barlowzero.env import is_atari_env_id, make_atari_env, make_gym_env, stack_frames

__all__ = ["BarlowZeroClient", "BarlowZeroServerError", "encode_observation", "main", "play"]


class BarlowZeroServerError(RuntimeError):
    """The endpoint answered with an HTTP error; `status` and the JSON `payload` say why."""

    def __init__(self, status: int, payload: Any) -> None:
        message = payload.get("error") if isinstance(payload, dict) else payload
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.payload = payload


def encode_observation(observation: Any) -> Any:
    """The JSON form of one stacked observation: base64 for uint8 arrays, else nested lists."""
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

    def act(self, observation: Any) -> dict[str, Any]:
        """`POST /act` with one stacked observation.

        Returns:
            {"action": int, "visit_counts": [int] * A, "root_value": float}.

        Raises:
            BarlowZeroServerError: on a 4xx/5xx answer.
        """
        return self._request("POST", "/act", {"observation": encode_observation(observation)})

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
    client: BarlowZeroClient | None = None,
) -> list[float]:
    """Plays `episodes` games of `env_id` with the endpoint choosing every action.

    Atari ids go through `make_atari_env(env_id, training=False)` (whole games, raw scores),
    other ids through `make_gym_env` (images as channels-first uint8 frames, as in training).
    `max_steps` (optional) cuts an episode short.

    Returns:
        The return (sum of rewards) of each episode.
    """
    client = client or BarlowZeroClient(url)
    info = client.health()
    expected_shape = tuple(info["observation_shape"])
    expected_dtype = np.dtype(info["observation_dtype"])
    if is_atari_env_id(env_id):
        env = make_atari_env(env_id, training=False)
    else:
        env = make_gym_env(env_id)
    try:
        frame_shape = tuple(env.observation_space.shape)
        num_frames = _num_frames(frame_shape, expected_shape, env_id)
        returns = []
        for episode in range(episodes):
            frame, _ = env.reset(seed=None if seed is None else seed + episode)
            frames = [np.asarray(frame)]
            total, steps, done = 0.0, 0, False
            while not done and (max_steps is None or steps < max_steps):
                window = np.stack(frames[-num_frames:])
                obs = stack_frames(window, len(window) - 1, num_frames).astype(expected_dtype)
                action = client.act(obs)["action"]
                frame, reward, terminated, truncated, _ = env.step(action)
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
    if not frame_shape:
        frame_shape = (1,)
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
    args = parser.parse_args(argv)
    returns = play(args.url, args.env, args.episodes, seed=args.seed, max_steps=args.max_steps)
    for i, value in enumerate(returns):
        print(f"episode {i}: return {value:g}")
    print(f"mean return over {len(returns)} episodes: {float(np.mean(returns)):g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
