"""The Ray Serve deployment, started for real on localhost, queried over HTTP.

Two apps share one Serve instance: a CartPole Algorithm checkpoint (vector observations, stacked
2 frames -> [8] float32) at "/" and an RLModule directory of an image model ([12, 96, 96] uint8,
4 actions) at "/image". Both models get their weights perturbed before saving, so that searches
differ between observations.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import socket
import threading
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
    ObservationError,
    ObservationSpec,
    decode_observation,
    parse_act_body,
    resolve_module_dir,
    serve_checkpoint,
)
from rllib_barlowzero.torch.barlowzero_torch_rl_module import (  # noqa: E402
    BarlowZeroTorchRLModule,
)

TINY = dict(
    channels=16, blocks=1, reduced_channels_reward=4, reduced_channels_value=4,
    reduced_channels_policy=4, resnet_fc_reward_layers=[16], resnet_fc_value_layers=[16],
    resnet_fc_policy_layers=[16], lstm_hidden_size=32, support_size=10, proj_hid=32, proj_out=32,
    pred_hid=16, pred_out=32, mlp_hidden_layers=[32], num_simulations=8,
)
NUM_SIMULATIONS = TINY["num_simulations"]
IMAGE_SHAPE = (12, 96, 96)
VECTOR_SPEC = ObservationSpec(shape=(8,), dtype=np.dtype("float32"), num_actions=2)
IMAGE_SPEC = ObservationSpec(shape=IMAGE_SHAPE, dtype=np.dtype("uint8"), num_actions=4)


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
    yield {"cartpole": root / "cartpole", "image": root / "image_module"}
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
            route_prefix="/image",
        )
        yield {"vector": vector_url, "image": image_url}
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
    assert _get(server["vector"] + "/")[1]["observation_shape"] == [8]
    status, info = _get(server["image"] + "/healthz")
    assert status == 200
    assert info["observation_shape"] == list(IMAGE_SHAPE) and info["observation_dtype"] == "uint8"
    assert info["num_actions"] == 4


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
    returns = play(server["vector"], "CartPole-v1", episodes=2, seed=0)
    assert len(returns) == 2
    assert all(1.0 <= r <= 500.0 for r in returns)
    # Deterministic search, seeded env: the same games again.
    assert play(server["vector"], "CartPole-v1", episodes=2, seed=0) == returns


def test_client_plays_atari_frames_against_the_image_model(server):
    pytest.importorskip("ale_py")
    returns = play(server["image"], "BreakoutNoFrameskip-v4", episodes=1, seed=0, max_steps=12)
    assert len(returns) == 1 and returns[0] >= 0.0
