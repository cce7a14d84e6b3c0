"""Ray Serve deployment of a BarlowZero RLModule: `POST /act` runs a batched, noise-free MCTS.

HTTP contract (all bodies are JSON; n = the number of frames the model stacks, S = the stacked
observation's shape, F = one frame's shape: S with its first axis divided by n):

* ``POST /act`` with ``{"observation": OBS}``: OBS is the *stacked* observation of shape S that
  the env runners feed the module (``rllib_barlowzero.env.stack_frames``: the last n frames,
  oldest first, concatenated on axis 0; an episode's first frame repeated before its start).
  Stateless: always safe, with any number of replicas.
* ``POST /act`` with ``{"observation": FRAME, "session": "ID"}`` (optionally ``"reset": true``):
  FRAME is *one* frame of shape F, and the server stacks it for you, exactly as training does:
  it keeps each session's last n-1 frames; a new session (or ``"reset": true``, sent with an
  episode's first frame) starts by repeating its first frame. ID is a non-empty string of at
  most 128 printable characters, ``"reset"`` a JSON boolean (default false).
* Either observation is written as

  - nested lists of numbers of exactly the expected shape, e.g. ``[0.1, -0.2, ...]``; or
  - ``{"base64": "...", "shape": [12, 96, 96], "dtype": "uint8"}``: the raw little-endian
    bytes of the array in C order (the compact form for images).

  Answer: ``{"action": 1, "visit_counts": [3, 5], "root_value": 0.42}``: the most visited root
  action, the root's visit counts (they sum to ``num_simulations``) and the search's root value.
  A model trained with ``search_algorithm: gumbel`` answers with its noise-free Gumbel search:
  ``"action"`` is the search's action (one of the most visited), and the answer adds
  ``"improved_policy"`` (the search's improved policy, a probability per action).
  A session request's answer adds ``"session": "ID"``, ``"new_session"`` (true when this frame
  started the session: its first request, a reset, or the first request after the session was
  evicted; a client that did not ask for a reset learns that its history was lost),
  ``"step"`` (this frame's index in the session since that start: 0, 1, 2, ...) and
  ``"frames"`` (how many of the n stacked frames were real frames of the session rather than
  repeats of its first frame: min(step + 1, n)).
* ``GET /healthz`` (or ``GET /``): the expected observation shape and dtype, n and F, the number
  of actions, search and batching settings, the sessions (count, cap, idle timeout, counters of
  started, reset, evicted and expired sessions) and counters of served requests and batches.
* Bad requests (malformed JSON, missing or unknown keys, wrong shape or dtype, non-finite
  numbers, base64 that does not decode or whose size does not match shape x dtype, bodies over
  the size limit, a session id that is not a non-empty string of at most 128 printable
  characters, a ``"reset"`` that is not a boolean or comes without ``"session"``, one frame
  without a session when n > 1: the message names both ways, the stack or a session) get HTTP
  400 with ``{"error": "...", "expected": {"observation_shape": [...], ...}}``. Unknown paths
  get 404, wrong methods 405. Requests are validated before they touch a session or join a
  batch, so a bad request changes no session and never fails the other requests of its batch.

Sessions are bounded (settings of `serve_checkpoint`, `build_app` and the deployment): at most
``max_sessions`` per replica (default 1000; the least recently used one is evicted to make room
for a new one), and a session idle for more than ``session_idle_timeout_s`` seconds (default
600; None: no timeout) is dropped; an evicted session's next request starts it anew
(``"new_session": true``, ``"step": 0``). ``max_sessions=0`` switches sessions off. Sessions
also need n: it is read from the Algorithm checkpoint's config (``stacked_observations``); an
RLModule directory does not record it, so serve it with ``num_frames=n`` to enable sessions.
A session's frame is applied before the search; if the search fails (HTTP 500) it stays
applied.

Concurrency: a replica applies each session request to its session in one step on the replica's
event loop, after the request's body has been read and validated and before it joins a batch:
the requests of one session are applied one at a time in the order they arrive (are read), each
is answered from the stack built for it, and different sessions never share frames. (A client
that sends a session's next frame before the previous answer came back gets no order from HTTP
anyway; `rllib_barlowzero.client.play` waits for each answer.)

Replicas: sessions live in one replica's memory, and Serve does not route a session's requests
to the same replica (HTTP has no sticky routing there). So a deployment with sessions on refuses
to run on more than one replica (``num_replicas`` or autoscaling ``max_replicas`` > 1). To serve
several replicas, switch sessions off (``max_sessions=0``) and have clients send the stacked
observation, which is stateless and always safe.

Loading: a replica loads only the RLModule directory (its constructor arguments, which hold the
search settings, and its weights); ``num_frames`` comes from the Algorithm's small
``class_and_ctor_args.pkl`` (its config). The algorithm's state (the replay buffer, gigabytes of
frames for Atari), the learners' optimizer state and the env runners are never read.

Concurrent valid requests are grouped by ``@serve.batch`` into one ``forward_inference`` call:
one batched search over all their observations.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import pickle
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rllib_barlowzero.columns import BarlowZeroColumns

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_SESSIONS",
    "MAX_SESSION_ID_LENGTH",
    "SESSION_IDLE_TIMEOUT_S",
    "ActRequest",
    "BarlowZeroDeployment",
    "ObservationError",
    "ObservationSpec",
    "SessionStore",
    "build_app",
    "decode_observation",
    "load_module",
    "parse_act_body",
    "parse_act_request",
    "read_num_frames",
    "resolve_module_dir",
    "serve_checkpoint",
]

logger = logging.getLogger(__name__)

#: Key of a row's answer when its observation could not be searched (a 400 for that request).
UNSEARCHABLE = "unsearchable"

#: Default limit on the size of a request body (bytes).
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Default cap on the number of sessions of a replica (the least recently used is evicted).
MAX_SESSIONS = 1000
#: Default idle timeout of a session (seconds).
SESSION_IDLE_TIMEOUT_S = 600.0
#: The longest session id (characters).
MAX_SESSION_ID_LENGTH = 128

# Where the default module lives inside RLlib checkpoints of the various components.
_MODULE_SUBDIRS = (
    "learner_group/learner/rl_module/default_policy",  # Algorithm checkpoint
    "learner/rl_module/default_policy",  # LearnerGroup checkpoint
    "rl_module/default_policy",  # Learner checkpoint
    "default_policy",  # MultiRLModule checkpoint
    "",  # the RLModule itself
)
_ACT_KEYS = ("observation", "session", "reset")


# -- observations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservationSpec:
    """What the served module takes: one stacked observation of `shape` and `dtype`.

    `num_frames` (n) is how many frames the observation stacks on axis 0 (None: unknown), and
    `sessions` whether `POST /act` takes one frame with a ``"session"`` (it needs n).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    num_actions: int
    num_frames: int | None = None
    sessions: bool = False

    def __post_init__(self) -> None:
        n = self.num_frames
        if n is not None and (
            isinstance(n, bool) or not isinstance(n, int) or n < 1 or not self.shape
            or self.shape[0] % n
        ):
            raise ValueError(
                f"num_frames={n!r} does not stack into the observation shape {list(self.shape)}: "
                "it must be an integer >= 1 dividing its first axis"
            )
        if self.sessions and n is None:
            raise ValueError("sessions need num_frames (the number of stacked frames)")

    @property
    def frame_shape(self) -> tuple[int, ...] | None:
        """The shape of one frame (None when `num_frames` is unknown)."""
        if self.num_frames is None:
            return None
        return (self.shape[0] // self.num_frames, *self.shape[1:])

    def describe(self) -> dict[str, Any]:
        """The expected input, as JSON (quoted in every error message)."""
        formats = [
            f"nested lists of numbers of shape {list(self.shape)}",
            f'{{"base64": <raw bytes, C order>, "shape": {list(self.shape)}, '
            f'"dtype": "{self.dtype}"}}',
        ]
        if self.sessions:
            formats.append(
                f'{{"observation": <one frame of shape {list(self.frame_shape)}, either form>, '
                '"session": "<id>", "reset": <true at an episode start>}'
            )
        return {
            "observation_shape": list(self.shape),
            "observation_dtype": str(self.dtype),
            "num_actions": self.num_actions,
            "num_frames": self.num_frames,
            "frame_shape": None if self.frame_shape is None else list(self.frame_shape),
            "sessions_enabled": self.sessions,
            "formats": formats,
        }

    def expectation(self, frame: bool = False) -> str:
        if frame:
            return f"expected one frame of shape {list(self.frame_shape)} with dtype {self.dtype}"
        return f"expected shape {list(self.shape)} with dtype {self.dtype}"


class ObservationError(ValueError):
    """A request the server refuses with HTTP 400; the message names the problem."""


@dataclass(frozen=True)
class ActRequest:
    """A validated `POST /act` body.

    `observation` is the stacked observation, or with a `session` one frame of the session.
    """

    observation: np.ndarray
    session: str | None = None
    reset: bool = False


def parse_act_body(body: bytes, spec: ObservationSpec) -> np.ndarray:
    """The observation of a `POST /act` body (one frame for a session request), or raises
    `ObservationError`."""
    return parse_act_request(body, spec).observation


def parse_act_request(body: bytes, spec: ObservationSpec) -> ActRequest:
    """Parses and validates a `POST /act` body against `spec`, or raises `ObservationError`."""
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
            + (
                f', or one frame of shape {list(spec.frame_shape)} with a "session"'
                if spec.sessions else ""
            )
        )
    unknown = sorted(set(payload) - set(_ACT_KEYS))
    if unknown:
        raise ObservationError(
            f"unknown key(s) {unknown}; POST /act takes \"observation\" and, for a session, "
            '"session" and "reset"'
        )
    session = None
    if "session" in payload:
        session = _check_session_id(payload["session"])
        if not spec.sessions:
            raise ObservationError(
                f"this server keeps no sessions ({_no_sessions_reason(spec)}); send the "
                f'stacked observation without "session", {spec.expectation()}'
            )
    reset = False
    if "reset" in payload:
        reset = payload["reset"]
        if not isinstance(reset, bool):
            raise ObservationError(
                f'"reset" must be true or false, got a JSON {_json_type(reset)} ({reset!r})'
            )
        if session is None:
            raise ObservationError(
                '"reset" goes with a "session" (it restarts that session); a request without '
                '"session" is stateless'
            )
    observation = decode_observation(payload["observation"], spec, frame=session is not None)
    return ActRequest(observation, session, reset)


def _check_session_id(value: Any) -> str:
    what = (
        f'"session" must be a non-empty string of at most {MAX_SESSION_ID_LENGTH} printable '
        "characters"
    )
    if not isinstance(value, str):
        raise ObservationError(f"{what}, got a JSON {_json_type(value)}")
    if not value:
        raise ObservationError(f"{what}, got an empty string")
    if len(value) > MAX_SESSION_ID_LENGTH:
        raise ObservationError(f"{what}, got {len(value)} characters")
    if not value.isprintable():
        raise ObservationError(f"{what}, got control or other non-printable characters")
    return value


def _no_sessions_reason(spec: ObservationSpec) -> str:
    if spec.num_frames is None:
        return (
            "it does not know how many frames the model stacks: an RLModule directory does not "
            "record it, serve it with num_frames=n"
        )
    return "max_sessions=0"


def decode_observation(value: Any, spec: ObservationSpec, *, frame: bool = False) -> np.ndarray:
    """Turns the JSON value of `"observation"` into a C-contiguous array of `spec`: the stacked
    observation, or with ``frame=True`` one frame (`spec.frame_shape`).

    Raises:
        ObservationError: naming what is wrong and what is expected.
    """
    if isinstance(value, dict):
        return _decode_base64(value, spec, frame)
    if isinstance(value, list):
        return _decode_nested(value, spec, frame)
    raise ObservationError(
        f'"observation" must be nested lists or a {{"base64", "shape", "dtype"}} object, got a '
        f"JSON {_json_type(value)}; {spec.expectation(frame)}"
    )


def _decode_nested(value: list, spec: ObservationSpec, frame: bool) -> np.ndarray:
    expectation = spec.expectation(frame)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = None
    if array is None or array.dtype == object:
        raise ObservationError(
            "observation is not a rectangular array of numbers (ragged lists, nulls, objects or "
            f"out-of-range integers); {expectation}"
        )
    if array.dtype.kind not in "iuf":
        what = "booleans" if array.dtype.kind == "b" else "strings"
        raise ObservationError(
            f"wrong dtype: observation contains {what}; it must contain numbers "
            f"({spec.dtype}); {expectation}"
        )
    _check_shape(array.shape, spec, frame)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ObservationError(
            f"observation contains non-finite numbers (NaN or Infinity); {expectation}"
        )
    if spec.dtype.kind in "iu":
        info = np.iinfo(spec.dtype)
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise ObservationError(
                f"wrong dtype: observation contains non-integer numbers, but the model takes "
                f"{spec.dtype}; {expectation}"
            )
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ObservationError(
                f"wrong dtype: observation values must lie in [{info.min}, {info.max}] "
                f"({spec.dtype}); {expectation}"
            )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, refused below
        array = array.astype(spec.dtype)
    return _finish(array, spec, frame)


def _decode_base64(value: dict, spec: ObservationSpec, frame: bool) -> np.ndarray:
    expectation = spec.expectation(frame)
    shape_wanted = spec.frame_shape if frame else spec.shape
    missing = [key for key in ("base64", "shape", "dtype") if key not in value]
    if missing:
        raise ObservationError(
            f"base64 observation is missing key(s) {missing}; send "
            f'{{"base64": ..., "shape": {list(shape_wanted)}, "dtype": "{spec.dtype}"}}'
        )
    data, shape, dtype = value["base64"], value["shape"], value["dtype"]
    if not isinstance(data, str):
        raise ObservationError(f'"base64" must be a string, got a JSON {_json_type(data)}')
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ObservationError(
            f'"shape" must be a list of non-negative integers, got {shape!r}; {expectation}'
        )
    try:
        given_dtype = np.dtype(dtype) if isinstance(dtype, str) else None
    except (TypeError, ValueError):
        given_dtype = None
    if given_dtype is None:
        raise ObservationError(f'unknown "dtype" {dtype!r}; {expectation}')
    if given_dtype != spec.dtype:
        raise ObservationError(f'wrong dtype: "dtype" is {given_dtype}; {expectation}')
    _check_shape(tuple(shape), spec, frame)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ObservationError(f'"base64" does not decode as base64: {e}') from None
    expected_bytes = math.prod(shape_wanted) * spec.dtype.itemsize
    if len(raw) != expected_bytes:
        raise ObservationError(
            f'"base64" decodes to {len(raw)} bytes, but shape {list(shape_wanted)} x '
            f"{spec.dtype} needs {expected_bytes} bytes"
        )
    array = np.frombuffer(raw, dtype=spec.dtype.newbyteorder("<")).reshape(shape_wanted)
    return _finish(array.astype(spec.dtype), spec, frame)


def _check_shape(shape: tuple[int, ...], spec: ObservationSpec, frame: bool) -> None:
    shape = tuple(shape)
    n, stacked, single = spec.num_frames, list(spec.shape), spec.frame_shape
    if frame:
        if shape == spec.frame_shape:
            return
        if shape == spec.shape:
            raise ObservationError(
                f'wrong shape: with a "session", "observation" is one frame of shape '
                f"{list(single)}, not the stacked observation {stacked} (the server stacks the "
                f'session\'s frames); or send the stack without "session"'
            )
        raise ObservationError(
            f"wrong shape: the frame has shape {list(shape)}, {spec.expectation(frame=True)} "
            f"(the model stacks {n} such frames into {stacked})"
        )
    if shape == spec.shape:
        return
    if n is not None and n > 1 and shape == single:
        sessions = "" if spec.sessions else f" (not on this server: {_no_sessions_reason(spec)})"
        raise ObservationError(
            f'wrong shape: one frame (shape {list(single)}) without a "session", but the model '
            f"takes {n} stacked frames, shape {stacked}. Either send the stacked observation "
            f"(the last {n} frames, oldest first, concatenated on axis 0; before an episode's "
            "start its first frame repeated), or send one frame with a \"session\" id, "
            '{"observation": FRAME, "session": "game-1", "reset": true} at an episode start, '
            f"and the server stacks the frames{sessions}"
        )
    hint = ""
    if spec.sessions:
        hint = f'; or send one frame of shape {list(single)} with a "session"'
    raise ObservationError(
        f"wrong shape: observation has shape {list(shape)}, {spec.expectation()} (the "
        f"stacked observation: the last n frames, oldest first, concatenated on axis 0){hint}"
    )


def _finish(array: np.ndarray, spec: ObservationSpec, frame: bool = False) -> np.ndarray:
    if spec.dtype.kind == "f" and not np.isfinite(array).all():
        raise ObservationError(
            "observation contains non-finite numbers (NaN, Infinity, or beyond the "
            f"{spec.dtype} range); {spec.expectation(frame)}"
        )
    return np.ascontiguousarray(array)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


# -- sessions ------------------------------------------------------------------------------------


@dataclass
class _Session:
    history: tuple[np.ndarray, ...]  # the last n-1 frames, oldest first
    frames: int  # frames received since the session (re)started
    last_used: float


@dataclass
class SessionStore:
    """Each session's last n-1 frames, bounded by a count (LRU eviction) and an idle timeout.

    `step` applies one frame to a session and returns the stacked observation training would
    feed the module (`rllib_barlowzero.env.stack_frames`: n frames oldest first on axis 0, a new
    session repeating its first frame). Every call is one atomic step (a lock guards it; it never
    awaits), so the steps of a session are applied in call order and sessions never mix.
    """

    num_frames: int
    max_sessions: int = MAX_SESSIONS
    idle_timeout_s: float | None = SESSION_IDLE_TIMEOUT_S
    clock: Callable[[], float] = time.monotonic
    stats: dict[str, int] = field(
        default_factory=lambda: {"started": 0, "resets": 0, "evicted": 0, "expired": 0}
    )

    def __post_init__(self) -> None:
        _check_session_settings(self.max_sessions, self.idle_timeout_s)
        if self.max_sessions < 1:
            raise ValueError("a SessionStore needs max_sessions >= 1")
        if isinstance(self.num_frames, bool) or int(self.num_frames) < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames!r}")
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        with self._lock:
            self._expire(self.clock())
            return session_id in self._sessions

    def step(
        self, session_id: str, frame: np.ndarray, reset: bool = False
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Applies `frame` to the session; returns (stacked observation, reply fields).

        The reply fields are ``{"session": id, "new_session": bool, "step": t, "frames": k}``:
        whether this frame started the session (a new or evicted id, or `reset`), its index t
        in the session since that start, and how many of the n stacked frames are real frames
        of the session, min(t + 1, n) (the rest repeat its first frame).
        """
        n = self.num_frames
        with self._lock:
            now = self.clock()
            self._expire(now)
            state = self._sessions.pop(session_id, None)
            if state is None:
                while len(self._sessions) >= self.max_sessions:
                    self._sessions.popitem(last=False)
                    self.stats["evicted"] += 1
                self.stats["started"] += 1
            elif reset:
                self.stats["resets"] += 1
            new = state is None or reset
            history, received = ((frame,) * (n - 1), 0) if new else (state.history, state.frames)
            stack = (*history, frame)
            received += 1
            self._sessions[session_id] = _Session(stack[1:], received, now)
        observation = np.concatenate(stack, axis=0) if frame.ndim else np.stack(stack)
        return observation, {
            "session": session_id,
            "new_session": new,
            "step": received - 1,
            "frames": min(received, n),
        }

    def _expire(self, now: float) -> None:
        if self.idle_timeout_s is None:
            return
        while self._sessions:
            session_id, state = next(iter(self._sessions.items()))
            if now - state.last_used <= self.idle_timeout_s:
                break
            del self._sessions[session_id]
            self.stats["expired"] += 1

    def describe(self) -> dict[str, Any]:
        """The settings, the number of live sessions and the counters, as JSON."""
        return {
            "enabled": True,
            "active": len(self),
            "max_sessions": self.max_sessions,
            "idle_timeout_s": self.idle_timeout_s,
            **self.stats,
        }


def _check_session_settings(max_sessions: Any, idle_timeout_s: Any) -> None:
    if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 0:
        raise ValueError(f"max_sessions must be an integer >= 0 (0: off), got {max_sessions!r}")
    if idle_timeout_s is not None and (
        isinstance(idle_timeout_s, bool)
        or not isinstance(idle_timeout_s, int | float)
        or not idle_timeout_s > 0
    ):
        raise ValueError(
            f"session_idle_timeout_s must be a number > 0 (or None: no timeout), got "
            f"{idle_timeout_s!r}"
        )


# -- checkpoints ---------------------------------------------------------------------------------


def resolve_module_dir(checkpoint: str | Path) -> Path:
    """The RLModule directory inside `checkpoint`.

    Accepts an Algorithm checkpoint (``algo.save_to_path``), a LearnerGroup/Learner/MultiRLModule
    checkpoint, or an RLModule directory (``module.save_to_path``). Only this directory is read
    to serve (see `load_module`).

    The files read to serve are checked up front, in the calling process: the module's
    ``class_and_ctor_args.pkl`` and ``module_state.*`` must load whole (``metadata.json``, if
    there, must be JSON), and so must an Algorithm checkpoint's ``rllib_checkpoint.json`` and
    ``class_and_ctor_args.pkl`` (its config, read by `read_num_frames`).

    Raises:
        FileNotFoundError: naming the places looked at (no checkpoint there).
        rllib_barlowzero.evaluate.CheckpointError: one line naming a missing or unreadable file.
    """
    from rllib_barlowzero.evaluate import (
        CHECKPOINT_FILES,
        CheckpointError,
        _check_file,
        check_module_files,
    )

    root = Path(checkpoint).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(root)!r} does not exist")
    algorithm = (root / "rllib_checkpoint.json").exists()
    for sub in _MODULE_SUBDIRS:
        candidate = root / sub if sub else root
        if not _holds_module_files(candidate):
            if algorithm:  # an Algorithm checkpoint's module is only ever in the first place
                raise CheckpointError(f"{root}: damaged checkpoint: {sub} is missing")
            continue
        if sub == _MODULE_SUBDIRS[0]:  # an Algorithm checkpoint: its config is read too
            for name in CHECKPOINT_FILES:
                _check_file(root, name)
        check_module_files(candidate, root)
        return candidate
    raise FileNotFoundError(
        f"no RLModule checkpoint in {str(root)!r}: looked for class_and_ctor_args.pkl and "
        f"module_state.* in {[s or '.' for s in _MODULE_SUBDIRS]}; pass an Algorithm checkpoint "
        "(algo.save_to_path) or an RLModule directory (module.save_to_path)"
    )


def _holds_module_files(directory: Path) -> bool:
    """Whether `directory` holds any file of an RLModule checkpoint (then it is checked)."""
    return directory.is_dir() and any(
        p.name == "class_and_ctor_args.pkl" or p.name.startswith("module_state")
        for p in directory.iterdir()
    )


def read_num_frames(checkpoint: str | Path) -> int | None:
    """How many frames the model of `checkpoint` stacks (the config's ``stacked_observations``).

    Read from the Algorithm checkpoint's ``class_and_ctor_args.pkl`` (the config, a few KB; never
    the algorithm state with its replay buffer). `checkpoint` is the Algorithm checkpoint or its
    module directory. None when the checkpoint does not record it (an RLModule directory saved on
    its own) or it cannot be read.
    """
    module_dir = resolve_module_dir(checkpoint)
    suffix = Path(_MODULE_SUBDIRS[0]).parts
    if module_dir.parts[-len(suffix):] != suffix:
        return None
    path = module_dir.parents[len(suffix) - 1] / "class_and_ctor_args.pkl"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            config = pickle.load(f)["ctor_args_and_kwargs"][0][0]
        n = config["stacked_observations"]
    except Exception as e:  # unpickling runs arbitrary imports; report, serve without sessions
        logger.warning("cannot read stacked_observations from %s: %s", path, e)
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return None
    return n


def load_module(checkpoint: str | Path) -> Any:
    """Loads the BarlowZero RLModule (on CPU, eval mode) from any checkpoint `resolve_module_dir`
    accepts.

    Reads only the module directory (``class_and_ctor_args.pkl``: spaces and model config with
    the search settings; ``module_state.*``: the weights), never the algorithm state (replay
    buffer), the learners' optimizer state or the env runners of an Algorithm checkpoint.
    """
    from ray.rllib.core.rl_module.rl_module import RLModule

    from rllib_barlowzero.torch.barlowzero_torch_rl_module import BarlowZeroTorchRLModule

    module = RLModule.from_checkpoint(str(resolve_module_dir(checkpoint)))
    if not isinstance(module, BarlowZeroTorchRLModule):
        raise TypeError(
            f"the checkpoint holds a {type(module).__name__}, not a BarlowZeroTorchRLModule"
        )
    module.eval()
    return module


def _choose_num_frames(checkpoint: str | Path, num_frames: int | None) -> int | None:
    """`num_frames` if given (it must agree with the checkpoint's config), else the config's."""
    recorded = read_num_frames(checkpoint)
    if num_frames is None:
        return recorded
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    if recorded is not None and recorded != num_frames:
        raise ValueError(
            f"num_frames={num_frames}, but the checkpoint was trained with "
            f"stacked_observations={recorded}; leave num_frames unset"
        )
    return num_frames


def _module_observation_shape(module_dir: str | Path) -> tuple[int, ...] | None:
    """The module's observation shape from its constructor arguments (None if unreadable)."""
    try:
        with open(Path(module_dir) / "class_and_ctor_args.pkl", "rb") as f:
            kwargs = pickle.load(f)["ctor_args_and_kwargs"][1]
        return tuple(int(d) for d in kwargs["observation_space"].shape)
    except Exception:  # the replica reports it when it loads the module
        return None


_SEVERAL_REPLICAS = (
    "sessions live in one replica's memory, and Serve does not route a session's requests to "
    "the same replica; serve one replica, or switch sessions off (max_sessions=0) and have "
    "clients send the stacked observation, which is safe with any number of replicas"
)


def _most_replicas() -> int:
    """The most replicas this deployment may run (1 outside a Serve replica)."""
    try:
        context = serve.get_replica_context()
    except Exception:
        return 1
    most = 1
    config = getattr(context, "_deployment_config", None)
    autoscaling = getattr(config, "autoscaling_config", None)
    for value in (
        getattr(context, "world_size", None),
        getattr(config, "num_replicas", None),
        getattr(autoscaling, "max_replicas", None),
    ):
        try:
            most = max(most, int(value))
        except (TypeError, ValueError):
            pass
    return most


# -- the deployment ------------------------------------------------------------------------------


@serve.deployment(name="BarlowZero", ray_actor_options={"num_cpus": 0.5})
class BarlowZeroDeployment:
    """Serves one BarlowZero RLModule over HTTP (see the module docstring for the contract).

    `num_frames` (None: from the checkpoint's config) enables sessions, with `max_sessions`
    (0: off) and `session_idle_timeout_s` (None: no timeout). With sessions on, the replica
    refuses to start when the deployment may run several replicas (see the module docstring).
    """

    def __init__(
        self,
        checkpoint: str,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.005,
        max_body_bytes: int = MAX_BODY_BYTES,
        torch_threads: int = 1,
        num_frames: int | None = None,
        max_sessions: int = MAX_SESSIONS,
        session_idle_timeout_s: float | None = SESSION_IDLE_TIMEOUT_S,
    ) -> None:
        import torch

        _check_session_settings(max_sessions, session_idle_timeout_s)
        if num_frames is None:
            num_frames = read_num_frames(checkpoint)
        sessions = num_frames is not None and max_sessions > 0
        if sessions and _most_replicas() > 1:
            raise ValueError(f"BarlowZero deployment with sessions: {_SEVERAL_REPLICAS}")
        torch.set_num_threads(torch_threads)
        self.module = load_module(checkpoint)
        self.checkpoint = str(checkpoint)
        space = self.module.observation_space
        self.spec = ObservationSpec(
            shape=tuple(int(d) for d in space.shape),
            dtype=np.dtype(space.dtype),
            num_actions=int(self.module.action_space.n),
            num_frames=num_frames,
            sessions=sessions,
        )
        self.max_sessions = int(max_sessions)
        self.session_idle_timeout_s = session_idle_timeout_s
        self.sessions = (
            SessionStore(num_frames, self.max_sessions, session_idle_timeout_s)
            if sessions else None
        )
        self.num_simulations = int(self.module.model_config["num_simulations"])
        self.search_algorithm = self.module.search_algorithm  # "puct" or "gumbel"
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
            act = parse_act_request(body, self.spec)
        except ObservationError as e:
            self.stats["bad_requests"] += 1
            return _error(400, str(e), self.spec)
        # From here to the batch there is no await: the session step is atomic on the event
        # loop, so a session's requests are applied in the order they were read.
        session_fields: dict[str, Any] = {}
        observation = act.observation
        if act.session is not None:
            observation, session_fields = self.sessions.step(act.session, observation, act.reset)
        try:
            result = await self._act_batch(observation)
        except Exception as e:  # report it, keep serving
            return _error(500, f"search failed: {type(e).__name__}: {e}", self.spec)
        if UNSEARCHABLE in result:  # this observation alone; the rest of its batch was answered
            return _error(400, f"this observation cannot be searched: {result[UNSEARCHABLE]}",
                          self.spec)
        self.stats["requests"] += 1
        return JSONResponse({**result, **session_fields})

    def health(self) -> dict[str, Any]:
        """The model's expected input, the settings, the sessions and request counters."""
        if self.sessions is not None:
            sessions = self.sessions.describe()
        else:
            sessions = {
                "enabled": False,
                "reason": _no_sessions_reason(self.spec),
                "active": 0,
                "max_sessions": self.max_sessions,
                "idle_timeout_s": self.session_idle_timeout_s,
            }
        return {
            "status": "ok",
            **self.spec.describe(),
            "num_simulations": self.num_simulations,
            "search_algorithm": self.search_algorithm,
            "max_batch_size": self.max_batch_size,
            "max_body_bytes": self.max_body_bytes,
            "checkpoint": self.checkpoint,
            "sessions": sessions,
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
        """One batched search over `observations` [B, *shape]; one answer dict per row.

        An observation that passes validation can still break the search (e.g. float32 3e38:
        finite, but the model's outputs or the backups overflow), which fails the whole batch:
        then each row is searched on its own, and a row that fails alone gets
        `{UNSEARCHABLE: reason}` (a 400 for its request only).
        """
        try:
            return self._search(observations)
        except ValueError as error:
            if len(observations) == 1:
                return [{UNSEARCHABLE: str(error)}]
            return [self.act(observations[i:i + 1])[0] for i in range(len(observations))]

    def _search(self, observations: np.ndarray) -> list[dict[str, Any]]:
        import torch
        from ray.rllib.core.columns import Columns

        out = self.module.forward_inference({Columns.OBS: torch.from_numpy(observations)})
        policy = np.asarray(out[BarlowZeroColumns.MCTS_POLICY], dtype=np.float64)
        gumbel = BarlowZeroColumns.VISIT_COUNTS in out
        if gumbel:  # mcts_policy is the Gumbel search's improved policy; its visits come apart
            visits = np.asarray(out[BarlowZeroColumns.VISIT_COUNTS], dtype=np.int64)
        else:
            visits = np.rint(policy * self.num_simulations).astype(np.int64)
        actions = np.asarray(out[Columns.ACTIONS]).reshape(-1)
        values = np.asarray(out[BarlowZeroColumns.ROOT_VALUE], dtype=np.float64).reshape(-1)
        answers = [
            {
                "action": int(actions[i]),
                "visit_counts": visits[i].tolist(),
                "root_value": float(values[i]) if math.isfinite(values[i]) else None,
            }
            for i in range(len(actions))
        ]
        if gumbel:
            for answer, row in zip(answers, policy, strict=True):
                answer["improved_policy"] = row.tolist()
        return answers


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
    *,
    num_frames: int | None = None,
    max_sessions: int = MAX_SESSIONS,
    session_idle_timeout_s: float | None = SESSION_IDLE_TIMEOUT_S,
    num_replicas: int = 1,
) -> serve.Application:
    """The Serve application for `checkpoint` (an Algorithm or RLModule checkpoint dir).

    Sessions: `num_frames` (None: the checkpoint config's ``stacked_observations``; an RLModule
    directory needs it given), `max_sessions` (0: off) and `session_idle_timeout_s` (None: no
    timeout). `num_replicas` > 1 needs ``max_sessions=0`` (see the module docstring).
    """
    module_dir = str(resolve_module_dir(checkpoint))
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if batch_wait_timeout_s < 0:
        raise ValueError(f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s}")
    _check_session_settings(max_sessions, session_idle_timeout_s)
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas must be an integer >= 1, got {num_replicas!r}")
    if num_replicas > 1 and max_sessions > 0:
        raise ValueError(f"num_replicas={num_replicas} with sessions: {_SEVERAL_REPLICAS}")
    num_frames = _choose_num_frames(checkpoint, num_frames)
    shape = _module_observation_shape(module_dir)
    if num_frames is not None and shape is not None:
        ObservationSpec(shape, np.dtype("float32"), 0, num_frames=num_frames)  # n divides it?
    return BarlowZeroDeployment.options(
        num_replicas=num_replicas,
        ray_actor_options={"num_cpus": num_cpus},
        # Enough requests in flight on the replica to fill whole batches.
        max_ongoing_requests=max(8, 4 * max_batch_size),
    ).bind(
        module_dir,
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        max_body_bytes=max_body_bytes,
        torch_threads=max(1, int(num_cpus)),
        num_frames=num_frames,
        max_sessions=max_sessions,
        session_idle_timeout_s=session_idle_timeout_s,
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
    num_frames: int | None = None,
    max_sessions: int = MAX_SESSIONS,
    session_idle_timeout_s: float | None = SESSION_IDLE_TIMEOUT_S,
    num_replicas: int = 1,
    app_name: str = "barlowzero",
    route_prefix: str = "/",
    ready_timeout_s: float = 120.0,
) -> str:
    """Serves the RLModule of `checkpoint` on http://host:port/route_prefix; returns that URL.

    `checkpoint` is an Algorithm checkpoint (``algo.save_to_path``) or an RLModule directory.
    Starts Ray (if needed) and Serve; with ``blocking=False`` it returns once ``GET /healthz``
    answers, else it serves until Ctrl-C and then shuts Serve down. Ray Serve runs
    one HTTP proxy per Ray cluster: a second call (another `app_name` and `route_prefix`) shares
    the first call's host and port. Sessions: `num_frames`, `max_sessions`,
    `session_idle_timeout_s` and `num_replicas` as in `build_app`.
    """
    import ray

    app = build_app(
        checkpoint,
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        num_cpus=num_cpus,
        max_body_bytes=max_body_bytes,
        num_frames=num_frames,
        max_sessions=max_sessions,
        session_idle_timeout_s=session_idle_timeout_s,
        num_replicas=num_replicas,
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
