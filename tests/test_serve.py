"""The Ray Serve deployment, started for real on localhost, queried over HTTP.

Three apps share one Serve instance: a CartPole Algorithm checkpoint (vector observations,
stacked 2 frames of [4] -> [8] float32; n read from its config) at "/", an RLModule directory of
an image model ([12, 96, 96] uint8 = 4 frames of [3, 96, 96], 4 actions; served with
num_frames=4) at "/image", and at "/caps" a copy of the CartPole checkpoint whose files outside
the module directory (algorithm state with the replay buffer, learner/optimizer state, env
runners) are garbage, served with tiny session caps (2 sessions, CAPS_IDLE_S idle timeout). Both
models get their weights perturbed before saving, so that searches differ between observations.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import pickle
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.rllib.core import DEFAULT_MODULE_ID  # noqa: E402
from ray.rllib.core.rl_module.rl_module import RLModule, RLModuleSpec  # noqa: E402

from rllib_barlowzero import BarlowZeroConfig  # noqa: E402
from rllib_barlowzero.client import BarlowZeroClient, BarlowZeroServerError, play  # noqa: E402
from rllib_barlowzero.serve import (  # noqa: E402
    MAX_BODY_BYTES,
    BarlowZeroDeployment,
    ObservationError,
    ObservationSpec,
    SessionStore,
    build_app,
    decode_observation,
    load_module,
    parse_act_body,
    parse_act_request,
    read_num_frames,
    resolve_module_dir,
    serve_checkpoint,
)
from rllib_barlowzero.torch.barlowzero_torch_rl_module import (  # noqa: E402
    BarlowZeroTorchRLModule,
)

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import TINY_NETWORK  # noqa: E402
except ImportError:  # tests/ imported as a package
    from tests.tiny import TINY_NETWORK  # noqa: E402

TINY = dict(TINY_NETWORK, num_simulations=8)
NUM_SIMULATIONS = TINY["num_simulations"]
IMAGE_SHAPE = (12, 96, 96)
VECTOR_SPEC = ObservationSpec(shape=(8,), dtype=np.dtype("float32"), num_actions=2)
IMAGE_SPEC = ObservationSpec(shape=IMAGE_SHAPE, dtype=np.dtype("uint8"), num_actions=4)
# As served: n frames known, sessions on.
VECTOR_SESSIONS = ObservationSpec((8,), np.dtype("float32"), 2, num_frames=2, sessions=True)
IMAGE_SESSIONS = ObservationSpec(IMAGE_SHAPE, np.dtype("uint8"), 4, num_frames=4, sessions=True)
VECTOR_FRAMES, IMAGE_FRAMES = 2, 4  # frames per stacked observation
FRAME_SHAPE = (3, 96, 96)  # one image frame
MODULE_SUBDIR = "learner_group/learner/rl_module/default_policy"
CAPS_MAX_SESSIONS, CAPS_IDLE_S = 2, 2.0


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (the zero-initialised heads give uniform searches otherwise)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))


def _b64(array: np.ndarray, shape=None, dtype=None) -> dict:
    return {
        "base64": base64.b64encode(array.tobytes()).decode(),
        "shape": list(array.shape if shape is None else shape),
        "dtype": str(array.dtype if dtype is None else dtype),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes | dict, timeout: float = 60.0) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _direct(module: RLModule, observation: np.ndarray) -> dict:
    out = module.forward_inference({"obs": torch.from_numpy(observation[None])})
    return {
        "action": int(out["actions"][0]),
        "visit_counts": np.rint(out["mcts_policy"][0] * NUM_SIMULATIONS).astype(int).tolist(),
        "root_value": float(out["root_value"][0]),
    }


def _check_answer(answer: dict, expected: dict, num_actions: int) -> None:
    assert set(answer) == {"action", "visit_counts", "root_value"}
    visits = answer["visit_counts"]
    assert len(visits) == num_actions and sum(visits) == NUM_SIMULATIONS
    assert answer["action"] == int(np.argmax(visits))
    assert answer["action"] == expected["action"]
    assert visits == expected["visit_counts"]
    assert math.isclose(answer["root_value"], expected["root_value"], rel_tol=1e-4, abs_tol=1e-5)


# -- fixtures: real checkpoints, one Serve instance -----------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A CartPole Algorithm checkpoint and an image RLModule directory."""
    root = tmp_path_factory.mktemp("serve_ckpts")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the replica: same kernels, same numbers
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    config = (
        BarlowZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=25)
        .training(**TINY, batch_size=16, history_length=50,
                  num_steps_sampled_before_learning_starts=100, replay_ratio=0.1,
                  training_steps=1000, stacked_observations=2)
    )
    torch.manual_seed(0)
    algo = config.build_algo()
    algo.learner_group.foreach_learner(
        lambda learner: _perturb(learner.module[DEFAULT_MODULE_ID], 0)
    )
    algo.save_to_path(str(root / "cartpole"))
    algo.stop()

    image_config = BarlowZeroConfig().training(**TINY)
    spec = RLModuleSpec(
        module_class=BarlowZeroTorchRLModule,
        observation_space=gym.spaces.Box(0, 255, IMAGE_SHAPE, np.uint8),
        action_space=gym.spaces.Discrete(4),
        model_config=image_config.model_config,
    )
    image_module = spec.build()
    _perturb(image_module, 1)
    image_module.save_to_path(str(root / "image_module"))

    # Everything of the Algorithm checkpoint but its module directory and its config
    # (class_and_ctor_args.pkl, which records stacked_observations) turned to garbage: the replay
    # buffer (algorithm_state.pkl), learner and optimizer state, env runners.
    garbled = root / "cartpole_garbled"
    shutil.copytree(root / "cartpole", garbled)
    keep = {garbled / "class_and_ctor_args.pkl", garbled / "rllib_checkpoint.json"}
    for path in garbled.rglob("*"):
        if path.is_file() and path not in keep and (garbled / MODULE_SUBDIR) not in path.parents:
            path.write_bytes(b"garbage, not a checkpoint file")
    yield {"cartpole": root / "cartpole", "image": root / "image_module", "garbled": garbled}
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(checkpoints) -> dict[str, str]:
    """Both apps served on one free localhost port; Serve and Ray are shut down afterwards."""
    port = _free_port()
    try:
        vector_url = serve_checkpoint(
            str(checkpoints["cartpole"]), port=port, blocking=False, batch_wait_timeout_s=0.05
        )
        image_url = serve_checkpoint(
            str(checkpoints["image"]), port=port, blocking=False, app_name="image",
            route_prefix="/image", num_frames=IMAGE_FRAMES,
        )
        caps_url = serve_checkpoint(
            str(checkpoints["garbled"]), port=port, blocking=False, app_name="caps",
            route_prefix="/caps", max_sessions=CAPS_MAX_SESSIONS,
            session_idle_timeout_s=CAPS_IDLE_S,
        )
        yield {"vector": vector_url, "image": image_url, "caps": caps_url}
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def vector_module(checkpoints) -> RLModule:
    path = checkpoints["cartpole"] / "learner_group/learner/rl_module/default_policy"
    return RLModule.from_checkpoint(str(path))


@pytest.fixture(scope="module")
def image_module(checkpoints) -> RLModule:
    return RLModule.from_checkpoint(str(checkpoints["image"]))


# -- pure validation (no Ray) ----------------------------------------------------------------------


def test_resolve_module_dir_accepts_both_layouts_and_refuses_others(checkpoints, tmp_path):
    algo_dir = checkpoints["cartpole"]
    module_dir = algo_dir / "learner_group/learner/rl_module/default_policy"
    assert resolve_module_dir(algo_dir) == module_dir
    assert resolve_module_dir(checkpoints["image"]) == checkpoints["image"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_module_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no RLModule checkpoint"):
        resolve_module_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        serve_checkpoint(str(tmp_path), blocking=False)


def test_decode_observation_round_trips():
    vector = np.linspace(-1, 1, 8, dtype=np.float32)
    np.testing.assert_array_equal(decode_observation(vector.tolist(), VECTOR_SPEC), vector)
    np.testing.assert_array_equal(decode_observation(_b64(vector), VECTOR_SPEC), vector)
    image = np.random.default_rng(0).integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)
    decoded = decode_observation(_b64(image), IMAGE_SPEC)
    assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, image)
    np.testing.assert_array_equal(decode_observation(image.tolist(), IMAGE_SPEC), image)
    assert parse_act_body(b'{"observation": [1, 2, 3, 4, 5, 6, 7, 8]}', VECTOR_SPEC).dtype == (
        np.float32
    )


# Each: (name, which server, body, words the error must contain).
_IMAGE = np.zeros(IMAGE_SHAPE, np.uint8)
_SHAPE = list(IMAGE_SHAPE)


def _obs(value) -> dict:
    return {"observation": value}


BAD_REQUESTS = [
    ("malformed_json", "vector", b'{"observation": [1, 2', "malformed JSON"),
    ("empty_body", "vector", b"", "malformed JSON"),
    ("not_utf8", "vector", b"\xff\xfe\xfa", "malformed JSON"),
    ("too_deep", "vector", b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
    ("not_an_object", "vector", b"[1, 2, 3]", "JSON object"),
    ("missing_key", "vector", {"obs": [0.0] * 8}, 'missing key "observation"'),
    ("observation_string", "vector", _obs("hello"), "nested lists"),
    ("wrong_shape", "vector", _obs([0.0] * 7), "wrong shape"),
    ("wrong_rank", "vector", _obs([[0.0] * 8]), "wrong shape"),
    ("ragged", "vector", _obs([[0.0, 1.0], [2.0]]), "rectangular"),
    ("null_inside", "vector", _obs([0.0] * 7 + [None]), "rectangular"),
    ("strings", "vector", _obs(["a"] * 8), "wrong dtype"),
    ("booleans", "vector", _obs([True] * 8), "wrong dtype"),
    ("nan", "vector", b'{"observation": [NaN, 0, 0, 0, 0, 0, 0, 0]}', "non-finite"),
    ("infinity", "vector", b'{"observation": [0, 0, 0, 0, 0, 0, 0, -Infinity]}', "non-finite"),
    ("float32_overflow", "vector", _obs([1e39] + [0.0] * 7), "non-finite"),
    ("b64_wrong_dtype", "vector", _obs(_b64(np.zeros(8, np.float64))), "wrong dtype"),
    ("b64_nan", "vector", _obs(_b64(np.full(8, np.nan, np.float32))), "non-finite"),
    ("b64_undecodable", "image",
     _obs({"base64": "!!not base64!!", "shape": _SHAPE, "dtype": "uint8"}), "does not decode"),
    ("b64_bad_padding", "image",
     _obs({"base64": "QUJ", "shape": _SHAPE, "dtype": "uint8"}), "does not decode"),
    ("b64_size_mismatch", "image", _obs(_b64(_IMAGE[:11], shape=IMAGE_SHAPE)), "bytes"),
    ("b64_wrong_shape", "image", _obs(_b64(_IMAGE[:4])), "wrong shape"),
    ("b64_wrong_dtype", "image", _obs(_b64(_IMAGE.astype(np.float32))), "wrong dtype"),
    ("b64_unknown_dtype", "image", _obs({**_b64(_IMAGE), "dtype": "uint9"}), "unknown"),
    ("b64_missing_key", "image", _obs({"base64": "", "dtype": "uint8"}), "missing key"),
    ("b64_not_string", "image", _obs({**_b64(_IMAGE), "base64": 5}), "must be a string"),
    ("b64_bad_shape_type", "image", _obs({**_b64(_IMAGE), "shape": "12x96x96"}), "shape"),
    ("image_out_of_range", "image", _obs((_IMAGE.astype(int) + 256).tolist()), "wrong dtype"),
    ("image_non_integer", "image", _obs((_IMAGE + 0.5).tolist()), "wrong dtype"),
]


def test_an_unsearchable_observation_fails_only_its_own_request(server, vector_module):
    # float32 3e38 is finite, so it passes validation, but the search cannot take it: batched
    # with good requests, it gets a 400 and they get their answers.
    url = server["vector"] + "/act"
    rng = np.random.default_rng(5)
    n, extreme = 8, 5
    observations = [rng.normal(0.0, 1.0, 8).astype(np.float32) for _ in range(n)]
    observations[extreme] = np.full(8, 3e38, np.float32)
    with pytest.raises(ValueError):
        _direct(vector_module, observations[extreme])
    expected = {i: _direct(vector_module, obs) for i, obs in enumerate(observations)
                if i != extreme}
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = _post(url, {"observation": observations[i].tolist()})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, (status, answer) in enumerate(results):
        if i == extreme:
            assert status == 400 and "cannot be searched" in answer["error"], answer
        else:
            assert status == 200, answer
            _check_answer(answer, expected[i], 2)


@pytest.mark.parametrize(
    ("name", "which", "body", "words"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_parse_act_body_refuses(name, which, body, words):
    spec = VECTOR_SPEC if which == "vector" else IMAGE_SPEC
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ObservationError) as info:
        parse_act_body(data, spec)
    assert words in str(info.value)


# -- over HTTP ------------------------------------------------------------------------------------


def test_healthz_reports_the_model_input(server):
    status, info = _get(server["vector"] + "/healthz")
    assert status == 200
    assert info["observation_shape"] == [8] and info["observation_dtype"] == "float32"
    assert info["num_actions"] == 2 and info["num_simulations"] == NUM_SIMULATIONS
    assert info["num_frames"] == VECTOR_FRAMES and info["frame_shape"] == [4]  # from the config
    sessions = info["sessions"]
    assert sessions["enabled"] and info["sessions_enabled"]
    assert sessions["max_sessions"] == 1000 and sessions["idle_timeout_s"] == 600.0
    assert isinstance(sessions["active"], int)
    assert _get(server["vector"] + "/")[1]["observation_shape"] == [8]
    status, info = _get(server["image"] + "/healthz")
    assert status == 200
    assert info["observation_shape"] == list(IMAGE_SHAPE) and info["observation_dtype"] == "uint8"
    assert info["num_actions"] == 4
    assert info["num_frames"] == IMAGE_FRAMES and info["frame_shape"] == list(FRAME_SHAPE)
    caps = _get(server["caps"] + "/healthz")[1]["sessions"]
    assert caps["max_sessions"] == CAPS_MAX_SESSIONS and caps["idle_timeout_s"] == CAPS_IDLE_S


def test_act_matches_the_module(server, vector_module):
    rng = np.random.default_rng(0)
    searches = set()
    for _ in range(8):
        obs = rng.normal(0.0, 1.0, 8).astype(np.float32)
        status, answer = _post(server["vector"] + "/act", {"observation": obs.tolist()})
        assert status == 200, answer
        _check_answer(answer, _direct(vector_module, obs), 2)
        searches.add(tuple(answer["visit_counts"]))
        # The base64 form of the same observation gives the same answer.
        status, again = _post(server["vector"] + "/act", {"observation": _b64(obs)})
        assert status == 200 and again == answer
    assert len(searches) > 1, "the perturbed model should search differently per observation"


def test_concurrent_requests_are_batched_and_bad_ones_do_not_spoil_a_batch(
    server, vector_module
):
    url = server["vector"] + "/act"
    rng = np.random.default_rng(1)
    n = 12
    observations = [rng.normal(0.0, 1.0, 8).astype(np.float32) for _ in range(n)]
    bad = {3, 7, 10}  # these send a wrong shape

    def burst() -> list[tuple[int, dict]]:
        results: list = [None] * n
        barrier = threading.Barrier(n)

        def worker(i: int) -> None:
            obs = observations[i][:7] if i in bad else observations[i]
            barrier.wait()
            results[i] = _post(url, {"observation": obs.tolist()})

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        return results

    expected = [_direct(vector_module, obs) for obs in observations]
    for _ in range(3):  # a loaded machine may spread a burst out; batching shows up eventually
        results = burst()
        for i, (status, answer) in enumerate(results):
            if i in bad:
                assert status == 400 and "wrong shape" in answer["error"]
            else:
                assert status == 200, answer
                _check_answer(answer, expected[i], 2)
        if _get(server["vector"] + "/healthz")[1]["stats"]["largest_batch"] >= 2:
            break
    stats = _get(server["vector"] + "/healthz")[1]["stats"]
    assert stats["largest_batch"] >= 2, stats
    assert stats["batches"] < stats["requests"], stats


@pytest.mark.parametrize(
    ("name", "which", "body", "words"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_400_over_http(server, name, which, body, words):
    status, answer = _post(server[which] + "/act", body)
    assert status == 400, answer
    assert words in answer["error"]
    shape = [8] if which == "vector" else list(IMAGE_SHAPE)
    assert answer["expected"]["observation_shape"] == shape


def test_oversized_bodies_wrong_paths_and_methods(server):
    url = server["vector"]
    big = json.dumps({"observation": [0.0] * 8, "pad": "x" * (MAX_BODY_BYTES + 1)}).encode()
    status, answer = _post(url + "/act", big)
    assert status == 400 and "too large" in answer["error"]
    assert answer["expected"]["observation_shape"] == [8]

    # Chunked upload (no Content-Length): the limit holds while reading.
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    chunks = (big[i:i + (1 << 20)] for i in range(0, len(big), 1 << 20))
    conn.request("POST", "/act", body=chunks, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 400 and "too large" in json.loads(response.read())["error"]
    conn.close()

    assert _get(url + "/nowhere")[0] == 404
    assert _get(url + "/act")[0] == 405


def test_keeps_serving_after_bad_requests(server, vector_module):
    for body in (b"{", {"observation": [0.0] * 3}, b'{"observation": [NaN]}'):
        assert _post(server["vector"] + "/act", body)[0] == 400
    obs = np.full(8, 0.25, np.float32)
    status, answer = _post(server["vector"] + "/act", {"observation": obs.tolist()})
    assert status == 200
    _check_answer(answer, _direct(vector_module, obs), 2)
    assert _get(server["vector"] + "/healthz")[1]["stats"]["bad_requests"] >= 3


def test_image_model_answers_base64(server, image_module):
    client = BarlowZeroClient(server["image"])
    rng = np.random.default_rng(2)
    for _ in range(3):
        obs = rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)
        answer = client.act(obs)  # uint8 -> base64 payload
        _check_answer(answer, _direct(image_module, obs), 4)
    # Nested lists work for images too (just bigger).
    status, listed = _post(server["image"] + "/act", {"observation": obs.tolist()})
    assert status == 200 and listed == answer
    with pytest.raises(BarlowZeroServerError, match="wrong shape") as info:
        client.act(obs[:9])
    assert info.value.status == 400


def test_client_plays_cartpole(server):
    started = _get(server["vector"] + "/healthz")[1]["sessions"]["started"]
    returns = play(server["vector"], "CartPole-v1", episodes=2, seed=0)
    assert len(returns) == 2
    assert all(1.0 <= r <= 500.0 for r in returns)
    sessions = _get(server["vector"] + "/healthz")[1]["sessions"]
    assert sessions["started"] == started + 1, "play uses one session of its own"
    assert sessions["resets"] >= 1, "the second episode resets the session"
    # Deterministic search, seeded env: the same games again.
    assert play(server["vector"], "CartPole-v1", episodes=2, seed=0) == returns

    # A server without sessions gets stacked observations (stacked by the client): same games.
    class NoSessions(BarlowZeroClient):
        def health(self):
            info = super().health()
            return {**info, "sessions": {**info["sessions"], "enabled": False}}

        def act(self, observation, *, session=None, reset=False):
            assert session is None and np.shape(observation) == (8,)
            return super().act(observation)

    stacked = play(server["vector"], "CartPole-v1", episodes=2, seed=0,
                   client=NoSessions(server["vector"]))
    assert stacked == returns


def test_client_plays_atari_frames_against_the_image_model(server):
    pytest.importorskip("ale_py")
    returns = play(server["image"], "BreakoutNoFrameskip-v4", episodes=1, seed=0, max_steps=12)
    assert len(returns) == 1 and returns[0] >= 0.0
    # The training run's Atari settings reach the client's env: FIRE-serving games play, and
    # 32x32 frames do not fit the model's 96x96 (the error names both shapes).
    returns = play(server["image"], "BreakoutNoFrameskip-v4", episodes=1, seed=0, max_steps=12,
                   env_config={"fire_on_life_start": True})
    assert len(returns) == 1
    with pytest.raises(ValueError, match=r"\[3, 32, 32\].*96"):
        play(server["image"], "BreakoutNoFrameskip-v4", max_steps=2,
             env_config={"frame_size": 32})
    with pytest.raises(ValueError, match="'env_id' and 'training' are set by play"):
        play(server["image"], "BreakoutNoFrameskip-v4", env_config={"training": True})
    with pytest.raises(ValueError, match="Atari ids only"):
        play(server["vector"], "CartPole-v1", env_config={"fire_on_life_start": True})


# -- sessions: one frame per request, the server stacks -------------------------------------------


def _hand_stack(frames: list[np.ndarray], t: int, n: int) -> np.ndarray:
    """The stacked observation at step t, built by hand the way training does (independent of
    stack_frames and of the server): frames t-n+1..t oldest first on axis 0, frame 0 repeated
    before the episode start."""
    return np.concatenate([frames[max(t - k, 0)] for k in range(n - 1, -1, -1)], axis=0)


def _session_answer(answer: dict) -> tuple[dict, dict]:
    """(the search answer, the session fields)."""
    keys = ("session", "new_session", "step", "frames")
    return {k: v for k, v in answer.items() if k not in keys}, {k: answer[k] for k in keys}


def test_session_store_stacks_like_training_and_evicts():
    now = [0.0]
    store = SessionStore(3, max_sessions=2, idle_timeout_s=10.0, clock=lambda: now[0])
    rng = np.random.default_rng(0)
    from rllib_barlowzero.env import stack_frames

    for shape in ((3, 2, 2), (4,)):
        frames = rng.normal(size=(6, *shape)).astype(np.float32)
        for t in range(6):
            obs, info = store.step(f"s{shape}", frames[t], reset=t == 0)
            np.testing.assert_array_equal(obs, stack_frames(frames, t, 3))
            np.testing.assert_array_equal(obs, _hand_stack(list(frames), t, 3))
            assert info == {"session": f"s{shape}", "new_session": t == 0, "step": t,
                            "frames": min(t + 1, 3)}
        obs, info = store.step(f"s{shape}", frames[5], reset=True)  # a reset repeats the frame
        np.testing.assert_array_equal(obs, np.concatenate([frames[5]] * 3))
        assert info["new_session"] and info["step"] == 0
    # LRU: 3 sessions in a store of 2; "a" was used longest ago and goes.
    frame = np.zeros(4, np.float32)
    store = SessionStore(2, max_sessions=2, idle_timeout_s=10.0, clock=lambda: now[0])
    store.step("a", frame)
    store.step("b", frame)
    store.step("a", frame)  # "a" is now the most recently used
    store.step("c", frame)  # evicts "b"
    assert "a" in store and "b" not in store and "c" in store and len(store) == 2
    assert store.stats == {"started": 3, "resets": 0, "evicted": 1, "expired": 0}
    assert store.step("b", frame)[1]["new_session"]  # restarts as new (evicting "a")
    # Idle timeout: sessions idle for more than 10 s are dropped.
    now[0] = 5.0
    store.step("c", frame)
    now[0] = 12.0
    assert "b" not in store and "c" in store and store.stats["expired"] == 1
    assert store.step("b", frame)[1] == {
        "session": "b", "new_session": True, "step": 0, "frames": 1
    }
    with pytest.raises(ValueError):
        SessionStore(2, max_sessions=-1)
    with pytest.raises(ValueError):
        SessionStore(2, idle_timeout_s=0)


def test_session_frames_give_the_answers_of_hand_stacked_observations(
    server, vector_module, image_module
):
    rng = np.random.default_rng(5)
    url = server["vector"] + "/act"
    for episode in range(2):  # the second episode reuses the id with a reset
        frames = [rng.normal(0.0, 1.0, 4).astype(np.float32) for _ in range(6)]
        for t, frame in enumerate(frames):
            body = {"observation": frame.tolist(), "session": "vec-game"}
            if t == 0:
                body["reset"] = True
            status, answer = _post(url, body)
            assert status == 200, answer
            search, info = _session_answer(answer)
            assert info == {"session": "vec-game", "new_session": t == 0, "step": t,
                            "frames": min(t + 1, VECTOR_FRAMES)}, (episode, t)
            stacked = _hand_stack(frames, t, VECTOR_FRAMES)
            status, expected = _post(url, {"observation": stacked.tolist()})  # no session
            assert status == 200 and search == expected, (episode, t)
            _check_answer(search, _direct(vector_module, stacked), 2)

    # Images: base64 frames [3, 96, 96], 4 of them stacked.
    url = server["image"] + "/act"
    frames = [rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8) for _ in range(5)]
    for t, frame in enumerate(frames):
        status, answer = _post(url, {"observation": _b64(frame), "session": "img-game",
                                     "reset": t == 0})
        assert status == 200, answer
        search, info = _session_answer(answer)
        assert info["step"] == t and info["frames"] == min(t + 1, IMAGE_FRAMES)
        stacked = _hand_stack(frames, t, IMAGE_FRAMES)
        assert stacked.shape == IMAGE_SHAPE
        status, expected = _post(url, {"observation": _b64(stacked)})
        assert status == 200 and search == expected
        _check_answer(search, _direct(image_module, stacked), 4)


def test_concurrent_sessions_do_not_mix(server, vector_module):
    url = server["vector"] + "/act"
    rng = np.random.default_rng(6)
    num_sessions, length = 4, 5
    episodes = {
        f"mix-{i}": [rng.normal(0.0, 1.0, 4).astype(np.float32) for _ in range(length)]
        for i in range(num_sessions)
    }
    results: dict[str, list] = {sid: [] for sid in episodes}
    barrier = threading.Barrier(num_sessions)

    def player(sid: str) -> None:  # one game per thread, each frame after the previous answer
        barrier.wait()
        for t, frame in enumerate(episodes[sid]):
            results[sid].append(_post(url, {"observation": frame.tolist(), "session": sid,
                                            "reset": t == 0}))

    threads = [threading.Thread(target=player, args=(sid,)) for sid in episodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for sid, frames in episodes.items():
        assert len(results[sid]) == length
        for t, (status, answer) in enumerate(results[sid]):
            assert status == 200, answer
            search, info = _session_answer(answer)
            assert info["session"] == sid and info["step"] == t
            _check_answer(search, _direct(vector_module, _hand_stack(frames, t, VECTOR_FRAMES)), 2)

    # Requests of one session sent all at once: each is applied whole, one after the other (the
    # steps are 0..k-1), and answered from the stack of its own frame and the one applied before.
    k = 6
    frames = [rng.normal(0.0, 1.0, 4).astype(np.float32) for _ in range(k)]
    answers: list = [None] * k
    barrier = threading.Barrier(k)

    def sender(i: int) -> None:
        barrier.wait()
        answers[i] = _post(url, {"observation": frames[i].tolist(), "session": "burst"})

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(k)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(status == 200 for status, _ in answers), answers
    order = sorted(range(k), key=lambda i: answers[i][1]["step"])
    assert [answers[i][1]["step"] for i in order] == list(range(k))
    applied = [frames[i] for i in order]
    for t, i in enumerate(order):
        search, _ = _session_answer(answers[i][1])
        _check_answer(search, _direct(vector_module, _hand_stack(applied, t, VECTOR_FRAMES)), 2)


def test_session_cap_evicts_the_least_recently_used_and_idle_sessions(server, vector_module):
    url, health = server["caps"] + "/act", server["caps"] + "/healthz"
    rng = np.random.default_rng(7)
    frames = [rng.normal(0.0, 1.0, 4).astype(np.float32) for _ in range(4)]

    def send(sid: str, frame: np.ndarray) -> dict:
        status, answer = _post(url, {"observation": frame.tolist(), "session": sid})
        assert status == 200, answer
        return answer

    for attempt in range(3):  # a loaded machine may let sessions idle out meanwhile: retry
        if attempt:
            time.sleep(CAPS_IDLE_S + 0.5)  # the sessions of the slow attempt expire
        ids = [f"lru{attempt}-{c}" for c in "abc"]
        before = _get(health)[1]["sessions"]
        start = time.monotonic()
        send(ids[0], frames[0])  # a
        send(ids[1], frames[0])  # b
        send(ids[0], frames[1])  # a again: b is now the least recently used
        send(ids[2], frames[0])  # c: the cap of 2 evicts b
        kept = send(ids[0], frames[2])  # a keeps its frames
        evicted = send(ids[1], frames[3])  # b restarts as a new session
        after = _get(health)[1]["sessions"]
        assert after["active"] <= CAPS_MAX_SESSIONS
        if time.monotonic() - start < CAPS_IDLE_S:
            break
    else:
        pytest.skip("the machine is too loaded to stay within the idle timeout")
    assert kept["session"] == ids[0] and not kept["new_session"] and kept["step"] == 2
    assert evicted["new_session"] and evicted["step"] == 0 and evicted["frames"] == 1
    assert after["evicted"] - before["evicted"] == 2  # b by c, then a or c by the new b
    assert after["started"] - before["started"] == 4
    search, _ = _session_answer(evicted)  # as a fresh session: its frame repeated
    _check_answer(search, _direct(vector_module, np.concatenate([frames[3]] * 2)), 2)

    # Idle timeout: a session idle for longer is dropped and restarts as new.
    first = send("idle", frames[0])
    assert first["new_session"]
    time.sleep(CAPS_IDLE_S + 0.5)
    info = _get(health)[1]["sessions"]
    assert info["active"] == 0 and info["expired"] >= 1
    again = send("idle", frames[1])
    assert again["new_session"] and again["step"] == 0 and again["frames"] == 1


_FRAME = [0.5, -0.5, 0.25, 0.0]
_STACKED = _FRAME * 2
BAD_SESSION_REQUESTS = [
    # (name, which server, body, words the error must contain)
    ("session_number", "vector", {"observation": _FRAME, "session": 7}, '"session" must be'),
    ("session_null", "vector", {"observation": _FRAME, "session": None}, '"session" must be'),
    ("session_list", "vector", {"observation": _FRAME, "session": ["a"]}, '"session" must be'),
    ("session_empty", "vector", {"observation": _FRAME, "session": ""}, "empty string"),
    ("session_too_long", "vector", {"observation": _FRAME, "session": "x" * 129}, "at most 128"),
    ("session_control_chars", "vector", {"observation": _FRAME, "session": "a\nb"},
     "non-printable"),
    ("reset_string", "vector", {"observation": _FRAME, "session": "s", "reset": "yes"},
     '"reset" must be true or false'),
    ("reset_number", "vector", {"observation": _FRAME, "session": "s", "reset": 1},
     '"reset" must be true or false'),
    ("reset_null", "vector", {"observation": _FRAME, "session": "s", "reset": None},
     '"reset" must be true or false'),
    ("reset_without_session", "vector", {"observation": _STACKED, "reset": True},
     '"reset" goes with a "session"'),
    ("unknown_key", "vector", {"observation": _FRAME, "sesion": "s"}, "unknown key"),
    ("one_frame_without_session", "vector", {"observation": _FRAME},
     'send the stacked observation'),
    ("stack_with_session", "vector", {"observation": _STACKED, "session": "s"},
     "one frame of shape [4]"),
    ("frame_wrong_shape", "vector", {"observation": [0.0] * 3, "session": "s"}, "wrong shape"),
    ("frame_nan", "vector", {"observation": [0.0, 0.0, 0.0, math.nan], "session": "s"},
     "non-finite"),
    ("frame_strings", "vector", {"observation": ["a"] * 4, "session": "s"}, "wrong dtype"),
    ("image_frame_without_session", "image", {"observation": _b64(_IMAGE[:3])},
     "send the stacked observation"),
    ("image_stack_with_session", "image", {"observation": _b64(_IMAGE), "session": "s"},
     "one frame of shape [3, 96, 96]"),
    ("image_frame_wrong_shape", "image", {"observation": _b64(_IMAGE[:2]), "session": "s"},
     "wrong shape"),
    ("image_frame_b64_size", "image",
     {"observation": _b64(_IMAGE[:2], shape=FRAME_SHAPE), "session": "s"}, "bytes"),
    ("image_frame_wrong_dtype", "image",
     {"observation": _b64(_IMAGE[:3].astype(np.float32)), "session": "s"}, "wrong dtype"),
]


def _json_body(body) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.mark.parametrize(
    ("name", "which", "body", "words"), BAD_SESSION_REQUESTS,
    ids=[b[0] for b in BAD_SESSION_REQUESTS],
)
def test_parse_act_request_refuses_bad_session_requests(name, which, body, words):
    spec = VECTOR_SESSIONS if which == "vector" else IMAGE_SESSIONS
    with pytest.raises(ObservationError) as info:
        parse_act_request(_json_body(body), spec)
    assert words in str(info.value)
    if name.endswith("frame_without_session"):  # names both ways
        assert '"session"' in str(info.value) and "stacked observation" in str(info.value)


def test_parse_act_request_reads_sessions():
    request = parse_act_request(b'{"observation": [1, 2, 3, 4], "session": "g", "reset": true}',
                                VECTOR_SESSIONS)
    assert request.session == "g" and request.reset and request.observation.shape == (4,)
    request = parse_act_request(json.dumps({"observation": _STACKED}).encode(), VECTOR_SESSIONS)
    assert request.session is None and not request.reset and request.observation.shape == (8,)
    # A server that keeps no sessions says so, and how to send instead.
    with pytest.raises(ObservationError, match="keeps no sessions"):
        parse_act_request(b'{"observation": [1, 2, 3, 4], "session": "g"}', VECTOR_SPEC)


@pytest.mark.parametrize(
    ("name", "which", "body", "words"), BAD_SESSION_REQUESTS,
    ids=[b[0] for b in BAD_SESSION_REQUESTS],
)
def test_bad_session_requests_get_400_over_http(server, name, which, body, words):
    status, answer = _post(server[which] + "/act", _json_body(body))
    assert status == 400, answer
    assert words in answer["error"]
    assert answer["expected"]["sessions_enabled"] is True


def test_bad_requests_change_no_session_and_the_server_keeps_serving(server, vector_module):
    url = server["vector"] + "/act"
    f0, f1 = np.full(4, 0.3, np.float32), np.full(4, -0.7, np.float32)
    status, answer = _post(url, {"observation": f0.tolist(), "session": "keep", "reset": True})
    assert status == 200 and answer["step"] == 0
    for _, _, body, _ in BAD_SESSION_REQUESTS:
        if isinstance(body, dict) and body.get("session") == "s":
            body = {**body, "session": "keep"}
        assert _post(url, _json_body(body))[0] == 400
    status, answer = _post(url, {"observation": f1.tolist(), "session": "keep"})
    assert status == 200, answer
    search, info = _session_answer(answer)
    assert info == {"session": "keep", "new_session": False, "step": 1, "frames": 2}
    _check_answer(search, _direct(vector_module, np.concatenate([f0, f1])), 2)
    status, answer = _post(url, {"observation": np.concatenate([f0, f1]).tolist()})
    assert status == 200 and answer == search


# -- serve reads only the module ------------------------------------------------------------------


def test_serving_reads_only_the_module_directory(checkpoints, server, vector_module):
    garbled = checkpoints["garbled"]
    for name in ("algorithm_state.pkl", "learner_group/learner/state.pkl"):
        with pytest.raises(pickle.UnpicklingError):  # no replay buffer, no optimizer state
            pickle.loads((garbled / name).read_bytes())
    assert resolve_module_dir(garbled) == garbled / MODULE_SUBDIR
    assert read_num_frames(garbled) == VECTOR_FRAMES  # from the config, not the state
    module = load_module(garbled)
    obs = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
    _check_answer(_direct(module, obs), _direct(vector_module, obs), 2)
    # ... and the app serving that checkpoint answers like the intact one.
    status, answer = _post(server["caps"] + "/act", {"observation": obs.tolist()})
    assert status == 200, answer
    _check_answer(answer, _direct(vector_module, obs), 2)
    info = _get(server["caps"] + "/healthz")[1]
    assert info["num_frames"] == VECTOR_FRAMES and info["sessions"]["enabled"]


def test_session_settings_and_replicas_are_checked(checkpoints, monkeypatch):
    cartpole = str(checkpoints["cartpole"])
    with pytest.raises(ValueError, match="max_sessions=0"):
        build_app(cartpole, num_replicas=2)  # sessions live in one replica
    build_app(cartpole, num_replicas=2, max_sessions=0)  # stacked observations only: fine
    with pytest.raises(ValueError, match="stacked_observations=2"):
        build_app(cartpole, num_frames=3)
    with pytest.raises(ValueError, match="does not stack into the observation shape"):
        build_app(str(checkpoints["image"]), num_frames=5)  # 12 channels are not 5 frames
    with pytest.raises(ValueError, match="max_sessions"):
        build_app(cartpole, max_sessions=-1)
    with pytest.raises(ValueError, match="session_idle_timeout_s"):
        build_app(cartpole, session_idle_timeout_s=0)
    assert read_num_frames(checkpoints["image"]) is None  # an RLModule directory: not recorded

    # A replica that finds itself one of several (e.g. scaled by a Serve config) refuses too.
    from types import SimpleNamespace

    import rllib_barlowzero.serve as serve_module

    context = SimpleNamespace(
        world_size=1,
        _deployment_config=SimpleNamespace(
            num_replicas=1, autoscaling_config=SimpleNamespace(max_replicas=3)
        ),
    )
    monkeypatch.setattr(serve_module.serve, "get_replica_context", lambda: context)
    with pytest.raises(ValueError, match="max_sessions=0"):
        BarlowZeroDeployment.func_or_class(cartpole)
