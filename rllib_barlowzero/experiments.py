"""RLlib's classic YAML experiments, read and checked before anything starts.

``{name: {run, env, stop, config, checkpoint_config, num_samples, storage_path, max_failures}}``
with ``grid_search``, ``choice``, ``uniform``, ``loguniform`` and ``randint`` inside ``config``.
`load_experiments` turns a file into checked `Experiment`s (an unknown key, algorithm or env, a
bad value: a `UserError`, one line naming the problem); the command line (`cli.py`) runs them.
Library code (evaluation, benchmarks) uses `check_env` and `load_yaml` from here.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import itertools
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import yaml
from ray import tune
from ray.rllib.algorithms.registry import ALGORITHMS
from ray.tune.registry import ENV_CREATOR, TRAINABLE_CLASS, _global_registry, get_trainable_cls
from ray.tune.result import AUTO_RESULT_KEYS

from rllib_barlowzero.env.atari import ATARI_ENV_CONFIG_KEYS, is_atari_env_id
from rllib_barlowzero.env.minatar_envs import is_minatar_env_id, register_minatar_envs

# Keys an experiment of a YAML file may have (RLlib's old `rllib train file` format).
EXPERIMENT_KEYS = (
    "run", "env", "stop", "config", "checkpoint_config", "checkpoint_freq", "checkpoint_at_end",
    "keep_checkpoints_num", "num_samples", "storage_path", "local_dir", "max_failures",
)
# YAML spellings of Tune search spaces: {grid_search: [a, b]}, {loguniform: [1e-4, 1e-1]}, ...
SEARCH_SPACES = ("grid_search", "choice", "uniform", "loguniform", "randint")
# Config dicts whose own keys are config keys too (checked like top-level keys).
NESTED_CONFIG_KEYS = ("evaluation_config",)
MAX_VARIANTS_TO_VALIDATE = 256
# Top-level keys of an RLlib/BarlowZero result (nested metrics are "key/sub/..."): a stop condition
# on anything else is most likely a typo, and Tune would then never stop the trial.
RESULT_KEYS = (
    *AUTO_RESULT_KEYS, "env_runners", "learners", "evaluation", "timers", "replay_buffer",
    "search", "training_steps_done", "num_env_steps_sampled_lifetime",
    "num_env_steps_trained_lifetime", "num_episodes_lifetime", "td_steps_mean",
    "learner_idle_share", "learner_steps_per_s", "env_steps_per_s", "fault_tolerance", "perf",
)


class UserError(Exception):
    """A mistake in the command line, a YAML file or a path: reported as one line."""


@dataclass
class Experiment:
    """One experiment of a YAML file, checked and ready for `tune.Tuner`."""

    name: str
    run: str
    config: dict[str, Any]
    stop: dict[str, Any] = field(default_factory=dict)
    checkpoint_config: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    storage_path: str | None = None
    max_failures: int = 0


# --------------------------------------------------------------------------------------------
# YAML -> experiments
# --------------------------------------------------------------------------------------------


def load_yaml(path: str) -> dict[str, Any]:
    """Reads a YAML experiment file; a missing file or a YAML error becomes a `UserError`."""
    if os.path.isdir(path):
        yamls = sorted(f for f in os.listdir(path) if f.endswith((".yaml", ".yml")))
        hint = f" (it holds {', '.join(yamls[:5])})" if yamls else ""
        raise UserError(f"{path}: is a directory; give one YAML experiment file{hint}")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and context_mark is not None and context_mark is not mark:
            problem += f" ({context} started on line {context_mark.line + 1})"
        raise UserError(f"{where}: malformed YAML: {problem}") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: expected a mapping of experiment names to experiments")
    for name, spec in data.items():
        if not isinstance(spec, dict):
            raise UserError(f"{path}: experiment '{name}' must be a mapping (run, env, ...)")
    return data


def parse_json_arg(flag: str, text: str | None) -> dict[str, Any]:
    """Parses a JSON object given on the command line (`--config`, `--stop`)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{flag} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag} must be a JSON object, e.g. '{{\"lr\": 0.02}}'")
    return value


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` updated with `override`; dicts are merged key by key, search spaces replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not is_search_space(
            value
        ):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def is_search_space(value: Any) -> bool:
    """True for a YAML search space: a one-key mapping such as {grid_search: [...]}."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SEARCH_SPACES


def known_algorithms() -> list[str]:
    """BarlowZero and RLlib's built-in algorithms."""
    return ["BarlowZero", *sorted(ALGORITHMS)]


def algorithm_class(run: str, experiment: str) -> type:
    """The Algorithm class registered with Tune as `run`."""
    if run == "BarlowZero":
        # Resolved directly: a registration made at import is lost once a Ray session ends.
        from rllib_barlowzero.barlowzero import BarlowZero

        return BarlowZero
    if run in ALGORITHMS or _global_registry.contains(TRAINABLE_CLASS, run):
        return get_trainable_cls(run)
    close = difflib.get_close_matches(run, known_algorithms(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(
        f"experiment '{experiment}': unknown algorithm run: {run}{hint}; "
        f"known: {', '.join(known_algorithms())}"
    )


def known_config_keys(config: Any) -> set[str]:
    """Keys `update_from_dict` understands: the config's fields, its dict keys, its properties."""
    keys = set(config.to_dict()) | {k for k in vars(config) if not k.startswith("_")}
    keys |= {
        name
        for name, member in inspect.getmembers(type(config))
        if isinstance(member, property) and not name.startswith("_")
    }
    return keys


def check_config_keys(config: dict[str, Any], default_config: Any, experiment: str) -> None:
    """Refuses keys `AlgorithmConfig.update_from_dict` would silently accept and ignore."""
    known = known_config_keys(default_config)

    def check(keys: Iterator[str], where: str) -> None:
        for key in keys:
            translated = default_config._translate_special_keys(key, warn_deprecated=False)
            if key in known or translated in known:
                continue
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"experiment '{experiment}': unknown config key '{where}{key}'{hint}")

    check(iter(config), "")
    for nested in NESTED_CONFIG_KEYS:
        if isinstance(config.get(nested), dict):
            check(iter(config[nested]), f"{nested}.")


def to_tune_search_spaces(value: Any, where: str, experiment: str) -> Any:
    """Replaces YAML search spaces ({loguniform: [a, b]}, ...) by Tune's objects, recursively."""
    if is_search_space(value):
        kind, args = next(iter(value.items()))
        if kind in ("grid_search", "choice"):
            if not isinstance(args, list) or not args:
                raise UserError(f"experiment '{experiment}': {where}: {kind} needs a list")
            return tune.grid_search(args) if kind == "grid_search" else tune.choice(args)
        if not (isinstance(args, list) and len(args) == 2
                and all(isinstance(a, int | float) for a in args) and args[0] < args[1]):
            raise UserError(
                f"experiment '{experiment}': {where}: {kind} needs [low, high] with low < high"
            )
        if kind == "loguniform" and args[0] <= 0:
            raise UserError(f"experiment '{experiment}': {where}: loguniform needs low > 0")
        return getattr(tune, kind)(*args)
    if isinstance(value, dict):
        return {
            k: to_tune_search_spaces(v, f"{where}.{k}" if where else k, experiment)
            for k, v in value.items()
        }
    return value


def config_variants(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Concrete configs covering a YAML config's search spaces: every grid and choice value and
    both bounds of each range (their product, up to MAX_VARIANTS_TO_VALIDATE)."""
    paths: list[tuple[str, ...]] = []
    options: list[list[Any]] = []

    def visit(value: Any, path: tuple[str, ...]) -> None:
        if is_search_space(value):
            kind, args = next(iter(value.items()))
            paths.append(path)
            options.append(list(args) if kind in ("grid_search", "choice")
                           else [args[0], args[1] - 1] if kind == "randint" else list(args))
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(v, (*path, k))

    visit(config, ())
    for combination in itertools.islice(itertools.product(*options), MAX_VARIANTS_TO_VALIDATE):
        variant = copy.deepcopy(config)
        for path, choice in zip(paths, combination, strict=True):
            node = variant
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = choice
        yield variant


def check_env(env: Any, experiment: str | None = None) -> None:
    """Refuses an env id that neither Tune's registry nor gymnasium (with ALE) knows."""
    if not isinstance(env, str):
        return
    try:
        import ale_py

        gym.register_envs(ale_py)
    except ImportError:  # pragma: no cover - ale-py is a dependency
        pass
    where = f"experiment '{experiment}': " if experiment else ""
    if is_minatar_env_id(env):
        try:
            register_minatar_envs(env)
        except ImportError as e:
            raise UserError(f"{where}{e}") from None
    if _global_registry.contains(ENV_CREATOR, env) or ":" in env:
        return
    if env in gym.registry:
        _check_discrete_actions(env, where)
        return
    close = difflib.get_close_matches(env, list(gym.registry), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"{where}unknown env '{env}'{hint}")


def _check_discrete_actions(env_id: str, where: str) -> None:
    """Refuses a gymnasium env whose actions BarlowZero cannot search (it needs Discrete)."""
    try:
        env = gym.make(env_id)
    except Exception:  # let the trial report envs that cannot even be made here
        return
    try:
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise UserError(
                f"{where}env '{env_id}' has actions {env.action_space}; BarlowZero's search "
                "needs a Discrete action space"
            )
    finally:
        env.close()


class _QuietRLlib:
    """Silences RLlib's info/warning logs (e.g. "running on the new API stack") while checking."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("ray.rllib")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: Any) -> None:
        self._logger.setLevel(self._level)


def make_experiment(
    name: str,
    spec: dict[str, Any],
    config_override: dict[str, Any] | None = None,
    stop_override: dict[str, Any] | None = None,
    storage_path: str | None = None,
) -> Experiment:
    """Checks one YAML experiment (keys, algorithm, env, config keys and values) and returns it."""
    for key in spec:
        if key not in EXPERIMENT_KEYS:
            close = difflib.get_close_matches(key, EXPERIMENT_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"experiment '{name}': unknown key '{key}'{hint}")
    if "run" not in spec:
        raise UserError(
            f"experiment '{name}' has no 'run' (the algorithm to train, e.g. run: BarlowZero)"
        )
    run = spec["run"]
    if not isinstance(run, str):
        raise UserError(f"experiment '{name}': run must be an algorithm name, got {run!r}")
    algo_cls = algorithm_class(run, name)

    config = spec.get("config") or {}
    if not isinstance(config, dict):
        raise UserError(f"experiment '{name}': config must be a mapping")
    config = deep_merge(config, config_override or {})
    if "env" in spec:
        config.setdefault("env", spec["env"])
    if config.get("env") is None:
        raise UserError(f"experiment '{name}' has no env (e.g. env: BreakoutNoFrameskip-v4)")
    check_env(config["env"], name)

    env_config = config.get("env_config") or {}
    if isinstance(config["env"], str) and is_atari_env_id(config["env"]):
        for key in env_config:
            if key not in ATARI_ENV_CONFIG_KEYS:
                close = difflib.get_close_matches(key, ATARI_ENV_CONFIG_KEYS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise UserError(
                    f"experiment '{name}': unknown Atari env_config key '{key}'{hint}; known: "
                    f"{', '.join(ATARI_ENV_CONFIG_KEYS)}"
                )

    stop = {**(spec.get("stop") or {}), **(stop_override or {})}
    for key, value in stop.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"experiment '{name}': stop {key}: expected a number, got {value!r}")
        if key.split("/")[0] not in RESULT_KEYS:
            close = difflib.get_close_matches(key, RESULT_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            print(f"warning: experiment '{name}': stop key '{key}' is not a result key{hint}; "
                  "the trials stop only if the algorithm reports it", file=sys.stderr)
    checkpoint_config = dict(spec.get("checkpoint_config") or {})
    legacy = {"checkpoint_freq": "checkpoint_frequency", "checkpoint_at_end": "checkpoint_at_end",
              "keep_checkpoints_num": "num_to_keep"}
    for old, new in legacy.items():
        if old in spec:
            checkpoint_config.setdefault(new, spec[old])
    experiment = Experiment(
        name=name,
        run=run,
        config=config,
        stop=stop,
        checkpoint_config=checkpoint_config,
        num_samples=int(spec.get("num_samples", 1)),
        storage_path=storage_path or spec.get("storage_path") or spec.get("local_dir"),
        max_failures=int(spec.get("max_failures", 0)),
    )
    try:
        tune.CheckpointConfig(**checkpoint_config)
    except (TypeError, ValueError) as e:
        raise UserError(f"experiment '{name}': checkpoint_config: {e}") from None

    if hasattr(algo_cls, "get_default_config"):
        with _QuietRLlib():
            check_config_keys(config, algo_cls.get_default_config(), name)
            to_tune_search_spaces(config, "config", name)  # shape of the search spaces
            for variant in config_variants(config):
                try:
                    algo_cls.get_default_config().update_from_dict(variant).validate()
                except (ValueError, TypeError, KeyError) as e:
                    message = " ".join(str(e).split())
                    raise UserError(f"experiment '{name}': {message}") from None
    return experiment


def load_experiments(
    path: str,
    config_override: dict[str, Any] | None = None,
    stop_override: dict[str, Any] | None = None,
    storage_path: str | None = None,
    only: list[str] | None = None,
) -> list[Experiment]:
    """Reads and checks the experiments of a YAML file (all, or those named in `only`)."""
    specs = load_yaml(path)
    for name in only or []:
        if name not in specs:
            close = difflib.get_close_matches(name, list(specs), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{path} has no experiment '{name}'{hint}; it has: {', '.join(specs)}")
    return [
        make_experiment(name, spec, config_override, stop_override, storage_path)
        for name, spec in specs.items()
        if not only or name in only
    ]
