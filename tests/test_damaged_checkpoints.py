"""Damaged checkpoints (a deleted file, a truncated state or config pickle, truncated JSON
metadata): `evaluate` and `serve` check what they load up front and give one line naming the
file, exit status 2, no traceback. Files they do not read (the replay buffer) are not checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny import tiny_cartpole_config

from rllib_barlowzero.cli import main

pytestmark = pytest.mark.usefixtures("ray_session")

MODULE = "learner_group/learner/rl_module/default_policy"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, ray_session) -> Path:
    """A tiny CartPole checkpoint after one training iteration."""
    path = tmp_path_factory.mktemp("damaged") / "checkpoint"
    algo = tiny_cartpole_config().build_algo()
    try:
        algo.train()
        algo.save_to_path(str(path))
    finally:
        algo.stop()
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _delete(path: Path) -> None:
    path.unlink()


CASES = [
    (f"{MODULE}/module_state.pkl", _delete, "is missing"),
    (f"{MODULE}/module_state.pkl", _truncate, "is unreadable"),
    (f"{MODULE}/class_and_ctor_args.pkl", _delete, "is missing"),
    (f"{MODULE}/class_and_ctor_args.pkl", _truncate, "is unreadable"),
    (f"{MODULE}/metadata.json", _truncate, "is unreadable"),
    ("rllib_checkpoint.json", _truncate, "is unreadable"),
    ("class_and_ctor_args.pkl", _truncate, "class_and_ctor_args.pkl"),
]


def _damaged(checkpoint: Path, tmp_path: Path, name: str, damage) -> Path:
    copy = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, copy)
    damage(copy / name)
    return copy


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("name, damage, problem", CASES,
                         ids=[f"{d.__name__[1:]}-{n}" for n, d, _ in CASES])
@pytest.mark.parametrize("command", ["evaluate", "serve"])
def test_a_damaged_file_gives_one_line_naming_it(checkpoint, tmp_path, capsys, command, name,
                                                 damage, problem):
    path = _damaged(checkpoint, tmp_path, name, damage)
    argv = [command, str(path)] + (["--episodes", "1"] if command == "evaluate" else [])
    assert main(argv) == 2
    line = _one_line(capsys)
    assert Path(name).name in line and problem in line, line
    assert "Traceback" not in line


def test_serve_checks_the_module_before_the_replica_starts(checkpoint, tmp_path):
    from rllib_barlowzero.evaluate import CheckpointError
    from rllib_barlowzero.serve import build_app, resolve_module_dir

    path = _damaged(checkpoint, tmp_path, f"{MODULE}/module_state.pkl", _truncate)
    for load in (resolve_module_dir, build_app):
        with pytest.raises(CheckpointError, match="module_state.pkl is unreadable"):
            load(str(path))
    # A directory that is no checkpoint at all is still a FileNotFoundError.
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no RLModule checkpoint"):
        resolve_module_dir(tmp_path / "empty")


def test_a_damaged_replay_buffer_does_not_stop_evaluation(checkpoint, tmp_path, capsys):
    path = _damaged(checkpoint, tmp_path, "algorithm_state.pkl", _truncate)
    (path / "learner_group/learner/state.pkl").write_bytes(b"garbage")  # optimizer state
    assert main(["evaluate", str(path), "--episodes", "1", "--quiet"]) == 0
    assert "CartPole-v1: 1 games" in capsys.readouterr().out
