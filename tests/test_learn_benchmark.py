"""benchmarks/learn.py: the learning benchmark's runs, record, merge and coefficients.

A tiny CartPole run per loss and seed over two invocations (as one process per seed would),
checked against the record's schema and the fixed evaluation points; the same seed again gives
the same curve and replaces its run. The merge and the per-loss coefficients are checked alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rllib_barlowzero import BarlowZeroConfig

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}",
                                                  ROOT / f"benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


learn = _load_benchmark("learn")
end_causes = _load_benchmark("cartpole_end_causes")
try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import TINY_CARTPOLE
except ImportError:  # tests/ imported as a package
    from tests.tiny import TINY_CARTPOLE

TINY = dict(TINY_CARTPOLE, num_simulations=4, stacked_observations=1)
ENV_STEPS, EVAL_EVERY, EVAL_EPISODES = 300, 150, 2
STEPS_PER_ITERATION = 100  # 4 envs x 25 steps


def write_yaml(path: Path, experiments: dict) -> Path:
    path.write_text(yaml.safe_dump(experiments))
    return path


def tiny_experiment(**config) -> dict:
    return {
        "run": "BarlowZero",
        "env": "CartPole-v1",
        "stop": {"env_runners/num_env_steps_sampled_lifetime": ENV_STEPS},
        "config": {
            "seed": 7, "num_env_runners": 0, "num_envs_per_env_runner": 4,
            "rollout_fragment_length": 25, "evaluation_num_env_runners": 0,
            "evaluation_interval": 1, "evaluation_duration": 8,
            "consistency_loss": "barlow", "consistency_loss_coeff": 0.5, **TINY, **config,
        },
    }


# --------------------------------------------------------------------------------------------
# End to end: two invocations, one record
# --------------------------------------------------------------------------------------------
def without_timing(curve: list[dict]) -> list[dict]:
    return [{k: v for k, v in p.items() if k not in ("wall_s", "eval_s")} for p in curve]


def test_two_invocations_merge_into_one_record(ray_session, tmp_path, capsys, monkeypatch):
    yaml_path = write_yaml(tmp_path / "tiny_cartpole.yaml", {"tiny": tiny_experiment()})
    out = tmp_path / "results"
    common = [str(yaml_path), "--eval-every", str(EVAL_EVERY), "--eval-episodes",
              str(EVAL_EPISODES), "--threshold", "30", "--out-dir", str(out)]
    writes: list[tuple[str, bool, int, int]] = []  # what each write left on disk for the run
    record_runs = learn.record_runs

    def recording_record_runs(out_dir, name, runs, plot=True):
        merged = record_runs(out_dir, name, runs, plot)
        on_disk = json.loads((out_dir / f"learning_{name}.json").read_text())
        for run in runs:
            written = next(r for r in on_disk if r["loss"] == run["loss"])
            writes.append((written["loss"], written["finished"], len(written["curve"]),
                           len(on_disk)))
        return merged

    monkeypatch.setattr(learn, "record_runs", recording_record_runs)
    assert learn.main([*common, "--losses", "barlow", "none", "--seeds", "0"]) == 0
    # Each point is on disk as it comes (a killed run keeps it), marked unfinished until the
    # run's last point, and the finished run replaces its partial entry.
    assert writes == [("barlow", False, 1, 1), ("barlow", True, 2, 1),
                      ("none", False, 1, 2), ("none", True, 2, 2)]
    monkeypatch.setattr(learn, "record_runs", record_runs)
    printed = capsys.readouterr().out
    # Progress: the coefficients each run used, a line per evaluation point, the summary.
    assert "consistency_loss_coeff=0.5 (yaml)" in printed  # the YAML's own loss, as written
    assert "policy_loss_coeff=10 (barlow default)" in printed
    assert "consistency_loss_coeff=0 (none default)" in printed
    assert printed.count("eval at") == 4
    json_path, png_path = out / "learning_tiny_cartpole.json", out / "learning_tiny_cartpole.png"
    assert len(json.loads(json_path.read_text())) == 2  # written after the first invocation

    checkpoints = tmp_path / "checkpoints"
    assert learn.main([*common, "--losses", "barlow", "--seeds", "1",
                       "--save-checkpoints", str(checkpoints)]) == 0
    runs = json.loads(json_path.read_text())
    # --save-checkpoints: the algorithm at each point, and replaying one greedily
    # (cartpole_end_causes.py, as `rllib evaluate` loads it) plays the recorded games again. The
    # first point: pUCT's greedy tie-breaking draws from the evaluation runner's streams, which
    # later evaluations of the same run find advanced.
    saved = runs[2]["curve"]
    assert [p["checkpoint"] for p in saved] == [
        str(checkpoints / "barlow_seed1" / f"env_steps_{t}") for t in (150, 300)]
    replayed = end_causes.play_checkpoint(saved[0]["checkpoint"], EVAL_EPISODES)
    assert replayed["eval_mean"] == pytest.approx(saved[0]["eval_mean"])
    assert [g["return"] for g in replayed["games"]] == [g["length"] for g in replayed["games"]]
    assert "checkpoint" not in runs[0]["curve"][0]  # only where asked for
    assert [(r["loss"], r["seed"]) for r in runs] == [("barlow", 0), ("none", 0), ("barlow", 1)]
    targets = learn.eval_targets(ENV_STEPS, EVAL_EVERY)
    assert targets == [150, 300]
    for run in runs:
        for key in ("env", "loss", "seed", "config", "curve", "final_eval_mean", "wall_s",
                    "threshold", "first_env_steps_at_or_above", "stays_at_or_above_after"):
            assert key in run, key
        assert run["finished"] is True
        assert run["env"] == "CartPole-v1"
        config = run["config"]
        assert config["seed"] == run["seed"] and config["consistency_loss"] == run["loss"]
        # The YAML's own loss (barlow) keeps the consistency coefficient the YAML sets.
        expected = {**learn.LOSS_COEFFICIENTS[run["loss"]],
                    **({"consistency_loss_coeff": 0.5} if run["loss"] == "barlow" else {})}
        assert {key: config[key] for key in expected} == expected
        assert config["evaluation_duration"] == EVAL_EPISODES
        curve = run["curve"]
        assert [p["target_env_steps"] for p in curve] == targets
        for point, target in zip(curve, targets, strict=True):
            for key in ("env_steps", "training_steps", "wall_s", "eval_mean", "eval_min",
                        "eval_max", "episodes", "truncated"):
                assert key in point, key
            # At the first iteration at or past the fixed point (an iteration samples about
            # 100 env steps: a fragment per env, or a little more).
            assert target <= point["env_steps"] < target + STEPS_PER_ITERATION + 25
            assert point["episodes"] == EVAL_EPISODES
            assert point["truncated"] == 0
            assert point["eval_min"] <= point["eval_mean"] <= point["eval_max"]
        assert curve[-1]["env_steps"] >= ENV_STEPS
        assert curve[0]["training_steps"] <= curve[1]["training_steps"]
        assert run["final_eval_mean"] == curve[-1]["eval_mean"]
        assert run["wall_s"] >= curve[-1]["wall_s"] > 0
        assert run["threshold"] == 30
        assert run["stays_at_or_above_after"] == (
            run["first_env_steps_at_or_above"] is not None
            and all(p["eval_mean"] >= 30 for p in curve
                    if p["env_steps"] >= run["first_env_steps_at_or_above"]))
    assert png_path.stat().st_size > 0

    # The same seed again: the same curve, and it replaces its run rather than adding one.
    assert learn.main([*common, "--losses", "none", "--seeds", "0"]) == 0
    again = json.loads(json_path.read_text())
    assert len(again) == 3
    assert without_timing(again[1]["curve"]) == without_timing(runs[1]["curve"])
    assert [again[0], again[2]] == [runs[0], runs[2]]

    png_path.unlink()
    assert learn.main(["--plot-only", "--name", "tiny_cartpole", "--out-dir", str(out)]) == 0
    assert png_path.stat().st_size > 0


# --------------------------------------------------------------------------------------------
# Merge
# --------------------------------------------------------------------------------------------
def fake_run(loss="barlow", seed=0, final=1.0, **config) -> dict:
    return {"env": "CartPole-v1", "loss": loss, "seed": seed,
            "config": {"seed": seed, "consistency_loss": loss, **config},
            "curve": [{"env_steps": 100, "eval_mean": final}], "final_eval_mean": final,
            "wall_s": 1.0}


def test_merge_replaces_the_same_run_and_appends_others():
    existing = [fake_run("barlow", 0, 1.0), fake_run("none", 0, 2.0)]
    merged = learn.merge_runs(existing, [
        fake_run("barlow", 0, 9.0),           # same env, loss, seed, config: replaced in place
        fake_run("barlow", 1, 3.0),           # another seed: appended
        fake_run("none", 0, 4.0, lr=0.05),    # another config: appended
    ])
    assert [(r["loss"], r["seed"], r["final_eval_mean"]) for r in merged] == [
        ("barlow", 0, 9.0), ("none", 0, 2.0), ("barlow", 1, 3.0), ("none", 0, 4.0)]
    assert existing[0]["final_eval_mean"] == 1.0  # the input list is left alone
    # Key order within the config does not matter.
    a = fake_run("barlow", 0, 1.0, lr=0.1, batch_size=4)
    b = fake_run("barlow", 0, 5.0)
    b["config"] = dict(reversed(list(a["config"].items())))
    assert learn.merge_runs([a], [b]) == [b]


def test_record_runs_merges_with_the_file_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(learn, "plot_runs", lambda *a, **k: None)
    learn.record_runs(tmp_path, "x", [fake_run("barlow", 0, 1.0)])
    learn.record_runs(tmp_path, "x", [fake_run("barlow", 1, 2.0)])
    learn.record_runs(tmp_path, "x", [fake_run("barlow", 0, 3.0)])
    runs = json.loads((tmp_path / "learning_x.json").read_text())
    assert [(r["seed"], r["final_eval_mean"]) for r in runs] == [(0, 3.0), (1, 2.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learning_x.json"]  # no temp files


WRITER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("learn", sys.argv[1])
learn = importlib.util.module_from_spec(spec)
sys.modules["learn"] = learn
spec.loader.exec_module(learn)
for i in range(int(sys.argv[4])):
    run = {"env": "CartPole-v1", "loss": "barlow", "seed": int(sys.argv[3]) * 1000 + i,
           "config": {}, "curve": [], "final_eval_mean": 0.0, "wall_s": 0.0}
    learn.record_runs(learn.Path(sys.argv[2]), "x", [run], plot=False)
"""


def test_concurrent_writers_lose_no_run(tmp_path):
    # Two processes (as one invocation per seed would) merging into one record at once.
    per_writer = 25
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(ROOT / "benchmarks/learn.py"),
                                 str(tmp_path), str(w), str(per_writer)]) for w in range(2)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    runs = json.loads((tmp_path / "learning_x.json").read_text())
    assert sorted(r["seed"] for r in runs) == sorted(
        w * 1000 + i for w in range(2) for i in range(per_writer))


# --------------------------------------------------------------------------------------------
# Coefficients
# --------------------------------------------------------------------------------------------
def coefficients(run) -> dict:
    return {k: run.config.get(k) for k in learn.COEFF_KEYS}


def test_a_loss_runs_with_its_methods_own_coefficients():
    assert learn.LOSS_COEFFICIENTS == {
        "barlow": {"consistency_loss_coeff": 0.001, "policy_loss_coeff": 10.0,
                   "value_loss_coeff": 0.25},
        "simsiam": {"consistency_loss_coeff": 2.0, "policy_loss_coeff": 1.0,
                    "value_loss_coeff": 0.25},
        "none": {"consistency_loss_coeff": 0.0, "policy_loss_coeff": 1.0,
                 "value_loss_coeff": 0.25},
    }
    # A YAML written for simsiam that sets two of the three coefficients.
    experiments = {"tiny": tiny_experiment(consistency_loss="simsiam", policy_loss_coeff=3.0)}
    runs = learn.plan_runs(experiments, None, [0, 1], eval_episodes=4)
    assert [(r.loss, r.seed) for r in runs] == [
        ("barlow", 0), ("simsiam", 0), ("none", 0), ("barlow", 1), ("simsiam", 1), ("none", 1)]
    for run in runs:
        assert run.config["consistency_loss"] == run.loss
        assert run.config["seed"] == run.seed and run.config["evaluation_duration"] == 4
        assert run.config["evaluation_interval"] is None
        if run.loss == "simsiam":
            # The YAML's own loss keeps what the YAML sets; what it leaves unset is the method's.
            assert coefficients(run) == {"consistency_loss_coeff": 0.5, "policy_loss_coeff": 3.0,
                                         "value_loss_coeff": 0.25}
            assert run.coefficient_sources == {"consistency_loss_coeff": "yaml",
                                               "policy_loss_coeff": "yaml",
                                               "value_loss_coeff": "simsiam default"}
        else:
            assert coefficients(run) == learn.LOSS_COEFFICIENTS[run.loss]
            assert set(run.coefficient_sources.values()) == {f"{run.loss} default"}

    # A YAML without a consistency_loss is the algorithm's default loss (barlow) as written.
    no_loss = tiny_experiment(policy_loss_coeff=3.0)
    del no_loss["config"]["consistency_loss"]
    (barlow,) = learn.plan_runs({"tiny": no_loss}, ["barlow"], [0])
    assert coefficients(barlow) == {"consistency_loss_coeff": 0.5, "policy_loss_coeff": 3.0,
                                    "value_loss_coeff": 0.25}
    assert learn.DEFAULT_LOSS == learn.build_config(barlow).consistency_loss == (
        BarlowZeroConfig().consistency_loss)

    # --keep-coefficients: the YAML's (and the algorithm's defaults where it has none).
    kept = learn.plan_runs(experiments, ["simsiam"], [0], keep_coefficients=True)
    assert coefficients(kept[0]) == {"consistency_loss_coeff": 0.5, "policy_loss_coeff": 3.0,
                                     "value_loss_coeff": None}
    assert kept[0].coefficient_sources["value_loss_coeff"] == "algorithm default"
    assert learn.build_config(kept[0]).value_loss_coeff == 0.25

    # --config overrides win over the method's defaults.
    (run,) = learn.plan_runs(experiments, ["none"], [2], overrides={"policy_loss_coeff": 5.0})
    assert coefficients(run) == {"consistency_loss_coeff": 0.0, "policy_loss_coeff": 5.0,
                                 "value_loss_coeff": 0.25}
    assert run.coefficient_sources["policy_loss_coeff"] == "--config"
    text = learn.describe_coefficients(run, learn.build_config(run))
    assert text == ("consistency_loss_coeff=0 (none default), policy_loss_coeff=5 (--config), "
                    "value_loss_coeff=0.25 (none default)")


def test_several_experiments_are_picked_by_their_consistency_loss():
    experiments = {
        "muzero": tiny_experiment(consistency_loss="none", consistency_loss_coeff=0.0,
                                  policy_loss_coeff=2.0),
        "barlowzero": tiny_experiment(consistency_loss="barlow", consistency_loss_coeff=0.01),
    }
    runs = learn.plan_runs(experiments, ["barlow", "none"], [0])
    assert [(r.experiment, r.loss) for r in runs] == [("barlowzero", "barlow"), ("muzero", "none")]
    assert coefficients(runs[0])["consistency_loss_coeff"] == 0.01  # as written, not defaults
    assert coefficients(runs[1])["policy_loss_coeff"] == 2.0
    assert [r.loss for r in learn.plan_runs(experiments, None, [0])] == ["none", "barlow"]
    with pytest.raises(learn.BenchmarkError, match="no experiment with consistency_loss 'simsiam'"):
        learn.plan_runs(experiments, ["simsiam"], [0])
    experiments["other"] = tiny_experiment()
    del experiments["other"]["config"]["consistency_loss"]
    with pytest.raises(learn.BenchmarkError, match="one experiment per consistency loss"):
        learn.plan_runs(experiments, None, [0])


def test_env_steps_default_and_fixed_points_and_threshold():
    experiments = {"tiny": tiny_experiment()}
    (run,) = learn.plan_runs(experiments, ["barlow"], [0])
    assert learn.default_env_steps(experiments, run) == ENV_STEPS
    del experiments["tiny"]["stop"]
    (run,) = learn.plan_runs(experiments, ["barlow"], [0], overrides={"total_env_steps": 1234})
    assert learn.default_env_steps(experiments, run) == 1234
    # A timed stop (breakout_cpu.yaml's hour) is refused, not run on to total_env_steps.
    experiments["tiny"]["stop"] = {"time_total_s": 3600}
    with pytest.raises(learn.BenchmarkError, match="stops on time_total_s.*--env-steps"):
        learn.default_env_steps(experiments, run)
    assert learn.eval_targets(1000, 300) == [300, 600, 900, 1000]
    assert learn.eval_targets(900, 300) == [300, 600, 900]

    curve = [{"env_steps": s, "eval_mean": m} for s, m in ((100, 10), (200, 480), (300, 470),
                                                           (400, 500))]
    assert learn.threshold_summary(curve, 475) == {
        "threshold": 475, "first_env_steps_at_or_above": 200, "stays_at_or_above_after": False}
    assert learn.threshold_summary(curve[:2], 475)["stays_at_or_above_after"] is True
    assert learn.threshold_summary(curve, 600)["stays_at_or_above_after"] is False
    assert learn.threshold_summary(curve, None)["first_env_steps_at_or_above"] is None


def test_cartpole_end_causes_agree_with_the_env():
    """The end cause read from the last observation matches CartPole's own termination."""
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    for seed, start, push in [(0, [0.0, 0.0, 0.0, 0.0], 1), (1, [2.35, 2.0, 0.0, 0.0], 1),
                              (2, [0.0, 0.0, 0.15, 1.0], 0), (3, [-2.35, -2.0, 0.0, 0.0], 0)]:
        observation, _ = env.reset(seed=seed)
        env.unwrapped.state = np.array(start)
        observations, terminated = [np.array(start)], False
        while not terminated:
            observation, _, terminated, _, _ = env.step(push)
            observations.append(observation)
        game = end_causes.describe_game(np.array(observations), float(len(observations) - 1))
        x, theta = observations[-1][0], observations[-1][2]
        expected = "cart_out" if abs(x) > 2.4 else "pole_fell"
        assert abs(x) > 2.4 or abs(theta) > 12 * np.pi / 180  # the env terminated for a reason
        assert game["cause"] == expected
        assert game["length"] == len(observations) - 1
    assert {end_causes.end_cause(np.array([2.5, 0, 0, 0])),
            end_causes.end_cause(np.array([0, 0, -0.3, 0])),
            end_causes.end_cause(np.array([1.0, 0, 0.1, 0]))} == {
        "cart_out", "pole_fell", "time_limit"}


# --------------------------------------------------------------------------------------------
# record_trial.py: a wall-time run (`rllib train file`, then `rllib evaluate`) into the record
# --------------------------------------------------------------------------------------------
record_trial = _load_benchmark("record_trial")


def write_hour_trial(tmp_path: Path, yaml_config: dict, params: dict,
                     env_steps: tuple[int, ...]) -> tuple[Path, Path]:
    """A one-hour YAML and a Tune trial folder (result.json per env-step count, params.json)."""
    yaml_path = write_yaml(tmp_path / "hour.yaml", {"hour": {
        "run": "BarlowZero", "env": "BreakoutNoFrameskip-v4", "stop": {"time_total_s": 3600},
        "config": yaml_config}})
    trial = tmp_path / "trial"
    trial.mkdir()
    results = [{"env_runners": {"num_env_steps_sampled_lifetime": n}, "training_steps_done": n // 4,
                "time_total_s": n / 10} for n in env_steps]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results))
    (trial / "params.json").write_text(json.dumps(params))
    return yaml_path, trial


def test_a_trial_and_its_evaluation_become_one_run_of_the_record(tmp_path):
    # params.json as Tune writes it: only what the YAML set (no consistency_loss: the default).
    yaml_path, trial = write_hour_trial(tmp_path, {"seed": 3, "max_moves": 100},
                                        {"seed": 3, "max_moves": 100}, (400, 12_345))
    report = {"checkpoint": "/ckpt", "episodes": 4, "scores": [0.0, 2.0, 5.0, 1.0],
              "lengths": [100, 80, 100, 60], "truncated": 2, "seconds": 12.5}
    report_path = tmp_path / "eval.json"
    report_path.write_text(json.dumps(report))
    out = tmp_path / "results"
    assert record_trial.main([str(trial), str(report_path), "--yaml", str(yaml_path),
                              "--out-dir", str(out)]) == 0
    assert record_trial.main([str(trial), str(report_path), "--yaml", str(yaml_path),
                              "--out-dir", str(out)]) == 0  # the same run again replaces it
    (run,) = json.loads((out / "learning_hour.json").read_text())
    assert (run["env"], run["loss"], run["seed"], run["experiment"]) == (
        "BreakoutNoFrameskip-v4", "barlow", 3, "hour")
    assert run["config"]["max_moves"] == 100 and run["stop"] == {"time_total_s": 3600}
    (point,) = run["curve"]
    # The trial's last result, and the report's games (mean by hand: 8 / 4).
    assert (point["env_steps"], point["training_steps"], point["wall_s"]) == (12_345, 3086, 1234.5)
    assert (point["eval_mean"], point["eval_min"], point["eval_max"]) == (2.0, 0.0, 5.0)
    assert (point["episodes"], point["truncated"], point["checkpoint"]) == (4, 2, "/ckpt")
    assert run["final_eval_mean"] == 2.0 and run["finished"] is True
    assert (out / "learning_hour.png").stat().st_size > 0


def test_a_trial_run_with_command_line_overrides_is_recorded_with_them(tmp_path):
    # `rllib train file hour.yaml --config '{"search_algorithm": "gumbel"}'`: Tune's params.json
    # has the override; the record must say what ran, not what the YAML says.
    yaml_path, trial = write_hour_trial(
        tmp_path, {"seed": 0, "num_simulations": 8},
        {"env": "BreakoutNoFrameskip-v4", "seed": 1, "num_simulations": 8,
         "search_algorithm": "gumbel", "consistency_loss": "none"}, (100,))
    report_path = tmp_path / "eval.json"
    report_path.write_text(json.dumps({"checkpoint": "/ckpt", "episodes": 1, "scores": [3.0],
                                       "lengths": [90], "truncated": 0, "seconds": 1.0}))
    out = tmp_path / "results"
    assert record_trial.main([str(trial), str(report_path), "--yaml", str(yaml_path),
                              "--name", "hour_gumbel", "--out-dir", str(out)]) == 0
    (run,) = json.loads((out / "learning_hour_gumbel.json").read_text())
    assert run["config"] == {"seed": 1, "num_simulations": 8, "search_algorithm": "gumbel",
                             "consistency_loss": "none"}
    assert (run["loss"], run["seed"], run["env"]) == ("none", 1, "BreakoutNoFrameskip-v4")
