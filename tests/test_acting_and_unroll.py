"""The module's acting streams (seeded, one per vector-env slot) and its unroll's augmentation."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.torch import barlowzero_torch_rl_module as module_file
from rllib_barlowzero.torch.barlowzero_torch_rl_module import BarlowZeroTorchRLModule

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import MICRO_NETWORK
except ImportError:  # tests/ imported as a package
    from tests.tiny import MICRO_NETWORK

TINY = dict(MICRO_NETWORK, lstm_hidden_size=8, mlp_hidden_layers=[16], num_simulations=8,
            num_unroll_steps=3)
IMAGE_SHAPE = (6, 12, 12)  # 2 stacked RGB frames


def build(observation_space: gym.Space, num_actions: int = 4, **training) -> Any:
    config = BarlowZeroConfig().training(**{**TINY, **training})
    return RLModuleSpec(
        module_class=BarlowZeroTorchRLModule,
        observation_space=observation_space,
        action_space=gym.spaces.Discrete(num_actions),
        model_config=config.model_config,
    ).build()


def test_identical_slots_get_their_own_streams_and_a_key_repeats_them():
    # An untrained net is flat (uniform policy, zero values): every choice is a tie. Identical
    # observations in 16 slots must not all play the same action, greedy or exploring.
    module = build(gym.spaces.Box(-1, 1, (4,), np.float32))
    obs = torch.zeros((16, 4))
    for explore in (False, True):
        act = module.forward_exploration if explore else module.forward_inference
        module.set_random_streams((5, 2, 0))
        first = [act({Columns.OBS: obs})[Columns.ACTIONS] for _ in range(3)]
        assert len(set(first[0].tolist())) > 1, explore  # slots differ
        assert len({tuple(a.tolist()) for a in first}) > 1, explore  # steps differ
        module.set_random_streams((5, 2, 0))
        again = [act({Columns.OBS: obs})[Columns.ACTIONS] for _ in range(3)]
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)
        module.set_random_streams((6, 2, 0))
        other = [act({Columns.OBS: obs})[Columns.ACTIONS] for _ in range(3)]
        assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_a_flat_state_does_not_lock_the_greedy_agent_on_one_action():
    # Breakout before FIRE: the same screen, step after step. Over 40 greedy steps a single slot
    # must try every action (a lowest-index tie rule would play action 0 forever).
    module = build(gym.spaces.Box(-1, 1, (4,), np.float32))
    module.set_random_streams((0, 3, 1))
    obs = torch.zeros((1, 4))
    played = {int(module.forward_inference({Columns.OBS: obs})[Columns.ACTIONS][0])
              for _ in range(40)}
    assert played == {0, 1, 2, 3}


def unroll_batch(batch_size: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    k = TINY["num_unroll_steps"]
    return {
        Columns.OBS: torch.from_numpy(rng.integers(0, 256, (batch_size, *IMAGE_SHAPE), np.uint8)),
        Columns.ACTIONS: torch.from_numpy(rng.integers(0, 4, (batch_size, k))),
        "target_obs": torch.from_numpy(
            rng.integers(0, 256, (batch_size, k, *IMAGE_SHAPE), np.uint8)),
    }


def test_augmentation_reaches_the_unroll():
    space = gym.spaces.Box(0, 255, IMAGE_SHAPE, np.uint8)
    batch = unroll_batch()
    outputs = {}
    for name, augmentation in (("on", ["shift", "intensity"]), ("off", [])):
        torch.manual_seed(0)
        module = build(space, augmentation=augmentation)
        with torch.no_grad():  # past the zero-initialised heads, so that outputs depend on input
            for parameter in module.parameters():
                parameter.normal_(0.0, 0.3)
        module.train()
        torch.manual_seed(1)
        outputs[name] = module.forward_train(batch)
        torch.manual_seed(2)
        outputs[name + " again"] = module.forward_train(batch)
    for key in ("value_logits", "policy_logits", "online_projection", "target_projection"):
        # Without augmentation the unroll is a function of the batch; with it, of the draws too.
        torch.testing.assert_close(outputs["off"][key], outputs["off again"][key])
        assert not torch.allclose(outputs["on"][key], outputs["off"][key]), key
        assert not torch.allclose(outputs["on"][key], outputs["on again"][key]), key


def test_one_shift_and_intensity_per_sample_for_all_unroll_targets(monkeypatch):
    # With every target step of a sample showing the same image, the augmented targets of a
    # sample must still be identical across steps (one draw per sample), and differ between
    # samples (a draw each).
    seen = []
    real_augment = module_file.augment

    def spy(x, names, generator=None):
        out = real_augment(x, names, generator)
        seen.append((x.shape, out))
        return out

    monkeypatch.setattr(module_file, "augment", spy)
    module = build(gym.spaces.Box(0, 255, IMAGE_SHAPE, np.uint8),
                   augmentation=["shift", "intensity"])
    module.train()
    batch = unroll_batch(batch_size=6)
    same_image = batch[Columns.OBS][:1].expand(6, *IMAGE_SHAPE)
    k = TINY["num_unroll_steps"]
    batch["target_obs"] = same_image[:, None].expand(6, k, *IMAGE_SHAPE).contiguous()
    module.forward_train(batch)
    c, h, w = IMAGE_SHAPE
    (obs_shape, _), (target_shape, augmented) = seen
    assert obs_shape == (6, c, h, w) and target_shape == (6, k * c, h, w)
    steps = augmented.reshape(6, k, c, h, w)
    for step in range(1, k):
        torch.testing.assert_close(steps[:, step], steps[:, 0])
    assert not torch.allclose(steps[0, 0], steps[1, 0])


@pytest.mark.parametrize("normalization", [False, True])
def test_state_normalization_reaches_the_network(normalization):
    module = build(gym.spaces.Box(-1, 1, (4,), np.float32), state_normalization=normalization)
    assert module.network.normalize_state is normalization


def test_checkpoints_with_the_old_counter_name_still_load():
    # The gradient-step counter was called `training_step` in earlier checkpoints.
    module = build(gym.spaces.Box(-1, 1, (4,), np.float32))
    state = module.state_dict()
    state["training_step"] = torch.tensor(1234)
    del state["gradient_steps"]
    module.load_state_dict(state)  # strict: no missing or unexpected key
    assert int(module.gradient_steps) == 1234
    state = module.get_state()  # RLlib's route (numpy), with the old name
    state["training_step"] = state.pop("gradient_steps") * 0 + 77
    module.set_state(state)
    assert int(module.gradient_steps) == 77
