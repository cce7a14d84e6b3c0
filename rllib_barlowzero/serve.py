"""Ray Serve deployment of a BarlowZero RLModule: `POST /act` runs a batched, noise-free MCTS.

HTTP contract (all bodies are JSON):

* ``POST /act`` with ``{"observation": OBS}`` where OBS is the *stacked* observation the env
  runners feed the module (``rllib_barlowzero.env.stack_frames``: n frames, oldest first):

  - nested lists of numbers of exactly the expected shape, e.g. ``[0.1, -0.2, ...]``; or
  - ``{"base64": "...", "shape": [12, 96, 96], "dtype": "uint8"}``: the raw little-endian
    bytes of the array in C order (the compact form for images).

  Answer: ``{"action": 1, "visit_counts": [3, 5], "root_value": 0.42}``: the most visited root
  action, the root's visit counts (they sum to ``num_simulations``) and the search's root value.
* ``GET /healthz`` (or ``GET /``): the expected observation shape and dtype, the number of
  actions, search and batching settings, and counters of served requests and batches.
* Bad requests (malformed JSON, missing keys, wrong shape or dtype, non-finite numbers, base64
  that does not decode or whose size does not match shape x dtype, bodies over the size limit)
  get HTTP 400 with ``{"error": "...", "expected": {"observation_shape": [...], ...}}``.
  Unknown paths get 404, wrong methods 405. Requests are validated before they join a batch, so
  a bad request never fails the other requests of its batch.

Concurrent valid requests are grouped by ``@serve.batch`` into one ``forward_inference`` call:
one batched search over all their observations.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = [
    "MAX_BODY_BYTES",
    "BarlowZeroDeployment",
    "ObservationError",
    "ObservationSpec",
    "build_app",
    "decode_observation",
    "load_module",
    "parse_act_body",
    "resolve_module_dir",
    "serve_checkpoint",
]

#: Default limit on the size of a request body (bytes).
MAX_BODY_BYTES = 8 * 1024 * 1024

# Where the default module lives inside RLlib checkpoints of the various components.
_MODULE_SUBDIRS = (
    "learner_group/learner/rl_module/default_policy",  # Algorithm checkpoint
    "learner/rl_module/default_policy",  # LearnerGroup checkpoint
    "rl_module/default_policy",  # Learner checkpoint
    "default_policy",  # MultiRLModule checkpoint
    "",  # the RLModule itself
)


# -- observations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservationSpec:
    """What the served module takes: one stacked observation of `shape` and `dtype`."""

    shape: tuple[int, ...]
    dtype: np.dtype
    num_actions: int

    def describe(self) -> dict[str, Any]:
        """The expected input, as JSON (quoted in every error message)."""
        return {
            "observation_shape": list(self.shape),
            "observation_dtype": str(self.dtype),
            "num_actions": self.num_actions,
            "formats": [
                f"nested lists of numbers of shape {list(self.shape)}",
                f'{{"base64": <raw bytes, C order>, "shape": {list(self.shape)}, '
                f'"dtype": "{self.dtype}"}}',
            ],
        }

    def expectation(self) -> str:
        return f"expected shape {list(self.shape)} with dtype {self.dtype}"


class ObservationError(ValueError):
    """A request the server refuses with HTTP 400; the message names the problem."""


def parse_act_body(body: bytes, spec: ObservationSpec) -> np.ndarray:
    """Parses a `POST /act` body into an observation of `spec`, or raises `ObservationError`."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise ObservationError("malformed JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ObservationError(f"malformed JSON: {e}") from None
    if not isinstance(payload, dict):
        raise ObservationError(
            f'the body must be a JSON object {{"observation": ...}}, got a JSON '
            f"{_json_type(payload)}"
        )
    if "observation" not in payload:
        raise ObservationError(
            f'missing key "observation" (got keys {sorted(payload)}); send '
            f'{{"observation": ...}} with the stacked observation, {spec.expectation()}'
        )
    return decode_observation(payload["observation"], spec)


def decode_observation(value: Any, spec: ObservationSpec) -> np.ndarray:
    """Turns the JSON value of `"observation"` into a C-contiguous array of `spec`.

    Raises:
        ObservationError: naming what is wrong and what is expected.
    """
    if isinstance(value, dict):
        return _decode_base64(value, spec)
    if isinstance(value, list):
        return _decode_nested(value, spec)
    raise ObservationError(
        f'"observation" must be nested lists or a {{"base64", "shape", "dtype"}} object, got a '
        f"JSON {_json_type(value)}; {spec.expectation()}"
    )


def _decode_nested(value: list, spec: ObservationSpec) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = None
    if array is None or array.dtype == object:
        raise ObservationError(
            "observation is not a rectangular array of numbers (ragged lists, nulls, objects or "
            f"out-of-range integers); {spec.expectation()}"
        )
    if array.dtype.kind not in "iuf":
        what = "booleans" if array.dtype.kind == "b" else "strings"
        raise ObservationError(
            f"wrong dtype: observation contains {what}; it must contain numbers "
            f"({spec.dtype}); {spec.expectation()}"
        )
    _check_shape(array.shape, spec)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ObservationError(
            f"observation contains non-finite numbers (NaN or Infinity); {spec.expectation()}"
        )
    if spec.dtype.kind in "iu":
        info = np.iinfo(spec.dtype)
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise ObservationError(
                f"wrong dtype: observation contains non-integer numbers, but the model takes "
                f"{spec.dtype}; {spec.expectation()}"
            )
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ObservationError(
                f"wrong dtype: observation values must lie in [{info.min}, {info.max}] "
                f"({spec.dtype}); {spec.expectation()}"
            )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, refused below
        array = array.astype(spec.dtype)
    return _finish(array, spec)


def _decode_base64(value: dict, spec: ObservationSpec) -> np.ndarray:
    missing = [key for key in ("base64", "shape", "dtype") if key not in value]
    if missing:
        raise ObservationError(
            f"base64 observation is missing key(s) {missing}; send "
            f'{{"base64": ..., "shape": {list(spec.shape)}, "dtype": "{spec.dtype}"}}'
        )
    data, shape, dtype = value["base64"], value["shape"], value["dtype"]
    if not isinstance(data, str):
        raise ObservationError(f'"base64" must be a string, got a JSON {_json_type(data)}')
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ObservationError(
            f'"shape" must be a list of non-negative integers, got {shape!r}; '
            f"{spec.expectation()}"
        )
    try:
        given_dtype = np.dtype(dtype) if isinstance(dtype, str) else None
    except (TypeError, ValueError):
        given_dtype = None
    if given_dtype is None:
        raise ObservationError(f'unknown "dtype" {dtype!r}; {spec.expectation()}')
    if given_dtype != spec.dtype:
        raise ObservationError(f'wrong dtype: "dtype" is {given_dtype}; {spec.expectation()}')
    _check_shape(tuple(shape), spec)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ObservationError(f'"base64" does not decode as base64: {e}') from None
    expected_bytes = math.prod(spec.shape) * spec.dtype.itemsize
    if len(raw) != expected_bytes:
        raise ObservationError(
            f'"base64" decodes to {len(raw)} bytes, but shape {list(spec.shape)} x {spec.dtype} '
            f"needs {expected_bytes} bytes"
        )
    array = np.frombuffer(raw, dtype=spec.dtype.newbyteorder("<")).reshape(spec.shape)
    return _finish(array.astype(spec.dtype), spec)


def _check_shape(shape: tuple[int, ...], spec: ObservationSpec) -> None:
    if tuple(shape) != spec.shape:
        raise ObservationError(
            f"wrong shape: observation has shape {list(shape)}, {spec.expectation()} (the "
            "stacked observation: the last n frames, oldest first, concatenated on axis 0)"
        )


def _finish(array: np.ndarray, spec: ObservationSpec) -> np.ndarray:
    if spec.dtype.kind == "f" and not np.isfinite(array).all():
        raise ObservationError(
            "observation contains non-finite numbers (NaN, Infinity, or beyond the "
            f"{spec.dtype} range); {spec.expectation()}"
        )
    return np.ascontiguousarray(array)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


# -- checkpoints ---------------------------------------------------------------------------------


def resolve_module_dir(checkpoint: str | Path) -> Path:
    """The RLModule directory inside `checkpoint`.

    Accepts an Algorithm checkpoint (``algo.save_to_path``), a LearnerGroup/Learner/MultiRLModule
    checkpoint, or an RLModule directory (``module.save_to_path``).

    Raises:
        FileNotFoundError: naming the places looked at.
    """
    root = Path(checkpoint).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(root)!r} does not exist")
    for sub in _MODULE_SUBDIRS:
        candidate = root / sub if sub else root
        if (candidate / "class_and_ctor_args.pkl").is_file() and any(
            p.name.startswith("module_state") for p in candidate.iterdir()
        ):
            return candidate
    raise FileNotFoundError(
        f"no RLModule checkpoint in {str(root)!r}: looked for class_and_ctor_args.pkl and "
        f"module_state.* in {[s or '.' for s in _MODULE_SUBDIRS]}; pass an Algorithm checkpoint "
        "(algo.save_to_path) or an RLModule directory (module.save_to_path)"
    )


def load_module(checkpoint: str | Path) -> Any:
    """Loads the BarlowZero RLModule (on CPU, eval mode) from any checkpoint `resolve_module_dir`
    accepts."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    from rllib_barlowzero.torch.barlowzero_torch_rl_module import BarlowZeroTorchRLModule

    module = RLModule.from_checkpoint(str(resolve_module_dir(checkpoint)))
    if not isinstance(module, BarlowZeroTorchRLModule):
        raise TypeError(
            f"the checkpoint holds a {type(module).__name__}, not a BarlowZeroTorchRLModule"
        )
    module.eval()
    return module


# -- the deployment ------------------------------------------------------------------------------


@serve.deployment(name="BarlowZero", ray_actor_options={"num_cpus": 0.5})
class BarlowZeroDeployment:
    """Serves one BarlowZero RLModule over HTTP (see the module docstring for the contract)."""

    def __init__(
        self,
        checkpoint: str,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.005,
        max_body_bytes: int = MAX_BODY_BYTES,
        torch_threads: int = 1,
    ) -> None:
        import torch

        torch.set_num_threads(torch_threads)
        self.module = load_module(checkpoint)
        self.checkpoint = str(checkpoint)
        space = self.module.observation_space
        self.spec = ObservationSpec(
            shape=tuple(int(d) for d in space.shape),
            dtype=np.dtype(space.dtype),
            num_actions=int(self.module.action_space.n),
        )
        self.num_simulations = int(self.module.model_config["num_simulations"])
        self.max_body_bytes = int(max_body_bytes)
        self.max_batch_size = int(max_batch_size)
        self._act_batch.set_max_batch_size(self.max_batch_size)
        self._act_batch.set_batch_wait_timeout_s(float(batch_wait_timeout_s))
        # Searches run off the event loop (requests keep queueing meanwhile), one at a time.
        self._executor = ThreadPoolExecutor(
            max_workers=1, initializer=torch.set_num_threads, initargs=(torch_threads,)
        )
        self.stats = {"requests": 0, "bad_requests": 0, "batches": 0, "largest_batch": 0}

    async def __call__(self, request: Request) -> Response:
        path = _relative_path(request)
        if path in ("/", "/healthz"):
            if request.method not in ("GET", "HEAD"):
                return _error(405, f"{path} answers GET", self.spec)
            return JSONResponse(self.health())
        if path != "/act":
            return _error(404, f"unknown path {path!r}; use POST /act or GET /healthz", self.spec)
        if request.method != "POST":
            return _error(405, f"/act answers POST, not {request.method}", self.spec)
        try:
            body = await self._read_body(request)
            observation = parse_act_body(body, self.spec)
        except ObservationError as e:
            self.stats["bad_requests"] += 1
            return _error(400, str(e), self.spec)
        try:
            result = await self._act_batch(observation)
        except Exception as e:  # report it, keep serving
            return _error(500, f"search failed: {type(e).__name__}: {e}", self.spec)
        self.stats["requests"] += 1
        return JSONResponse(result)

    def health(self) -> dict[str, Any]:
        """The model's expected input, the settings, and request counters."""
        return {
            "status": "ok",
            **self.spec.describe(),
            "num_simulations": self.num_simulations,
            "max_batch_size": self.max_batch_size,
            "max_body_bytes": self.max_body_bytes,
            "checkpoint": self.checkpoint,
            "stats": dict(self.stats),
        }

    async def _read_body(self, request: Request) -> bytes:
        limit = self.max_body_bytes
        too_large = f"request body too large: the limit is {limit} bytes"
        length = request.headers.get("content-length")
        refusal = None
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise ObservationError("malformed Content-Length header") from None
            if declared > limit:
                refusal = f"{too_large}; Content-Length is {declared}"
        # A refused body is still read to its end (up to 16x the limit, not kept), so a client
        # that is still sending reads the 400 rather than a reset connection.
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit and refusal is None:
                refusal, chunks = too_large, []
            if refusal is None:
                chunks.append(chunk)
            elif size > 16 * limit:
                break
        if refusal is not None:
            raise ObservationError(refusal)
        return b"".join(chunks)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _act_batch(self, observations: list[np.ndarray]) -> list[dict[str, Any]]:
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(observations))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.act, np.stack(observations))

    def act(self, observations: np.ndarray) -> list[dict[str, Any]]:
        """One batched search over `observations` [B, *shape]; one answer dict per row."""
        import torch

        out = self.module.forward_inference({"obs": torch.from_numpy(observations)})
        policy = np.asarray(out["mcts_policy"], dtype=np.float64)
        visits = np.rint(policy * self.num_simulations).astype(np.int64)
        actions = np.asarray(out["actions"]).reshape(-1)
        values = np.asarray(out["root_value"], dtype=np.float64).reshape(-1)
        return [
            {
                "action": int(actions[i]),
                "visit_counts": visits[i].tolist(),
                "root_value": float(values[i]) if math.isfinite(values[i]) else None,
            }
            for i in range(len(actions))
        ]


def _relative_path(request: Request) -> str:
    """The request path below the application's route prefix."""
    path = request.url.path
    root = request.scope.get("root_path", "") or ""
    if root and root != "/" and path.startswith(root):
        path = path[len(root):]
    path = "/" + path.strip("/")
    return path


def _error(status: int, message: str, spec: ObservationSpec) -> JSONResponse:
    return JSONResponse({"error": message, "expected": spec.describe()}, status_code=status)


# -- launching -----------------------------------------------------------------------------------


def build_app(
    checkpoint: str,
    max_batch_size: int = 16,
    batch_wait_timeout_s: float = 0.005,
    num_cpus: float = 0.5,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> serve.Application:
    """The Serve application for `checkpoint` (an Algorithm or RLModule checkpoint dir)."""
    module_dir = str(resolve_module_dir(checkpoint))
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if batch_wait_timeout_s < 0:
        raise ValueError(f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s}")
    return BarlowZeroDeployment.options(
        ray_actor_options={"num_cpus": num_cpus},
        # Enough requests in flight on the replica to fill whole batches.
        max_ongoing_requests=max(8, 4 * max_batch_size),
    ).bind(
        module_dir,
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        max_body_bytes=max_body_bytes,
        torch_threads=max(1, int(num_cpus)),
    )


def serve_checkpoint(
    checkpoint: str,
    port: int = 8000,
    host: str = "127.0.0.1",
    blocking: bool = True,
    max_batch_size: int = 16,
    batch_wait_timeout_s: float = 0.005,
    *,
    num_cpus: float = 0.5,
    max_body_bytes: int = MAX_BODY_BYTES,
    app_name: str = "barlowzero",
    route_prefix: str = "/",
    ready_timeout_s: float = 120.0,
) -> str:
    """Serves the RLModule of `checkpoint` on http://host:port/route_prefix; returns that URL.

    `checkpoint` is an Algorithm checkpoint (``algo.save_to_path``) or an RLModule directory.
    Starts Ray (if needed) and Serve; with ``blocking=False`` it returns once ``GET /healthz``
    answers, else it serves until Ctrl-C and then shuts Serve down. Ray Serve runs
    one HTTP proxy per Ray cluster: a second call (another `app_name` and `route_prefix`) shares
    the first call's host and port.
    """
    import ray

    app = build_app(
        checkpoint,
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        num_cpus=num_cpus,
        max_body_bytes=max_body_bytes,
    )
    if not ray.is_initialized():
        ray.init()
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=app_name, route_prefix=route_prefix, blocking=False)
    client_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{client_host}:{port}{route_prefix.rstrip('/')}"
    _wait_until_ready(url + "/healthz", ready_timeout_s)
    if not blocking:
        return url
    print(f"BarlowZero serving {checkpoint} at {url} (POST /act, GET /healthz); Ctrl-C stops.")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return url


def _wait_until_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.2)
    raise RuntimeError(
        f"the BarlowZero app did not answer {url} within {timeout_s:.0f} s ({last}); if Serve "
        "was already running in this Ray cluster, it keeps its first host and port"
    )
