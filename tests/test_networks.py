"""Tests of rllib_barlowzero.torch.networks.BarlowZeroNetwork."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.torch.barlowzero_torch_rl_module import BarlowZeroTorchRLModule
from rllib_barlowzero.torch.losses import (
    barlow_twins_loss,
    categorical_cross_entropy,
    scalar_to_support,
    simsiam_loss,
)
from rllib_barlowzero.torch.networks import (
    BarlowZeroNetwork,
    InitialOutput,
    RecurrentOutput,
    normalize_hidden_state,
)

SMALL = dict(
    channels=16,
    blocks=1,
    reduced_channels_reward=4,
    reduced_channels_value=4,
    reduced_channels_policy=4,
    resnet_fc_reward_layers=(16,),
    resnet_fc_value_layers=(16,),
    resnet_fc_policy_layers=(16,),
    lstm_hidden_size=32,
    support_size=10,
    proj_hid=64,
    proj_out=64,
    pred_hid=32,
    pred_out=64,
)
SMALL_OBS = (6, 24, 24)  # 2 stacked RGB frames of 24x24 -> latent 16 x 2 x 2


def _uint8_obs(batch: int, shape=SMALL_OBS, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, *shape), generator=gen, dtype=torch.uint8)


@pytest.fixture(scope="module")
def paper_net() -> BarlowZeroNetwork:
    torch.manual_seed(0)
    return BarlowZeroNetwork((12, 96, 96), 4)


def test_paper_config_shapes(paper_net):
    net = paper_net.train()
    obs = _uint8_obs(3, (12, 96, 96))
    out = net.initial_inference(obs)
    assert isinstance(out, InitialOutput)
    assert out.state.shape == (3, 64, 6, 6)
    assert net.latent_shape == (64, 6, 6)
    assert out.value.shape == (3,)
    assert out.value_logits.shape == (3, 601)
    assert out.policy_logits.shape == (3, 4)
    lstm = net.initial_lstm_state(3)
    assert lstm[0].shape == (1, 3, 512) and lstm[1].shape == (1, 3, 512)
    rec = net.recurrent_inference(out.state, lstm, torch.tensor([0, 1, 3]))
    assert isinstance(rec, RecurrentOutput)
    assert rec.state.shape == (3, 64, 6, 6)
    assert rec.lstm_state[0].shape == (1, 3, 512) and rec.lstm_state[1].shape == (1, 3, 512)
    assert rec.value_prefix.shape == (3,) and rec.value.shape == (3,)
    assert rec.value_prefix_logits.shape == (3, 601) and rec.value_logits.shape == (3, 601)
    assert rec.policy_logits.shape == (3, 4)
    assert net.project(out.state).shape == (3, 1024)
    assert net.projection[0].in_features == 2304
    assert net.predictor is None  # Barlow Twins has no predictor


def test_paper_config_is_the_appendix_network(paper_net):
    dyn = paper_net.dynamics_network
    assert dyn.conv.in_channels == 65 and dyn.conv.out_channels == 64
    assert dyn.lstm.input_size == 16 * 36 and dyn.lstm.hidden_size == 512
    stem = paper_net.representation_network.stem
    assert stem[0].out_channels == 32 and stem[0].stride == (2, 2)
    sizes = [m.out_features for m in paper_net.projection if isinstance(m, torch.nn.Linear)]
    assert sizes == [1024, 1024, 1024]
    momenta = {
        m.momentum
        for m in paper_net.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    }
    assert momenta == {0.1}


def test_hidden_states_are_min_max_normalised_when_asked():
    torch.manual_seed(0)
    net = BarlowZeroNetwork((12, 96, 96), 4, normalize_state=True).eval()
    with torch.no_grad():
        out = net.initial_inference(_uint8_obs(2, (12, 96, 96), seed=1))
        rec = net.recurrent_inference(out.state, net.initial_lstm_state(2), torch.tensor([1, 2]))
    for state in (out.state, rec.state):
        flat = state.flatten(1)
        torch.testing.assert_close(flat.min(1).values, torch.zeros(2))
        torch.testing.assert_close(flat.max(1).values, torch.ones(2))


def test_hidden_states_are_not_normalised_by_default(paper_net):
    # EfficientZero's Atari model (state_norm=False): the state is the residual stack's output
    # as it is (ReLU: min 0, max not 1); normalisation is exactly the min-max map of it.
    net = paper_net.eval()
    with torch.no_grad():
        out = net.initial_inference(_uint8_obs(2, (12, 96, 96), seed=1))
    flat = out.state.flatten(1)
    assert not torch.allclose(flat.max(1).values, torch.ones(2))
    normalised = BarlowZeroNetwork((12, 96, 96), 4, normalize_state=True).eval()
    normalised.load_state_dict(net.state_dict())
    with torch.no_grad():
        expected = normalize_hidden_state(net.initial_inference(
            _uint8_obs(2, (12, 96, 96), seed=1)).state)
        torch.testing.assert_close(normalised.initial_inference(
            _uint8_obs(2, (12, 96, 96), seed=1)).state, expected)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_zero_initialised_heads(mode):
    torch.manual_seed(0)
    net = BarlowZeroNetwork(SMALL_OBS, 5, **SMALL)
    net.train(mode == "train")
    with torch.no_grad():
        out = net.initial_inference(_uint8_obs(4))
        rec = net.recurrent_inference(out.state, net.initial_lstm_state(4), torch.arange(4))
    for value in (out.value, rec.value, rec.value_prefix):
        torch.testing.assert_close(value, torch.zeros(4), rtol=0, atol=1e-5)
    for logits in (out.policy_logits, rec.policy_logits):
        torch.testing.assert_close(torch.softmax(logits, -1), torch.full((4, 5), 0.2))


def test_vector_observation_network():
    torch.manual_seed(0)
    net = BarlowZeroNetwork((16,), 2, mlp_hidden_layers=(32, 32), **SMALL)  # CartPole x 4
    net.eval()
    obs = torch.randn(5, 16)
    with torch.no_grad():
        out = net.initial_inference(obs)
        rec = net.recurrent_inference(
            out.state, net.initial_lstm_state(5), torch.tensor([0, 1, 1, 0, 1])
        )
    assert out.state.shape == (5, 16, 1, 1) and net.latent_shape == (16, 1, 1)
    assert out.value_logits.shape == (5, 21) and out.policy_logits.shape == (5, 2)
    assert rec.state.shape == (5, 16, 1, 1) and rec.value_prefix_logits.shape == (5, 21)
    assert net.project(out.state).shape == (5, 64)
    # A single root works in eval mode (search).
    assert net.initial_inference(obs[:1]).state.shape == (1, 16, 1, 1)


def test_separate_supports_and_consistency_variants():
    net = BarlowZeroNetwork(
        SMALL_OBS, 3, **{**SMALL, "value_support_size": 7, "reward_support_size": 4}
    ).train()
    out = net.initial_inference(_uint8_obs(2))
    rec = net.recurrent_inference(out.state, net.initial_lstm_state(2), torch.tensor([0, 2]))
    assert out.value_logits.shape == (2, 15) and rec.value_prefix_logits.shape == (2, 9)

    simsiam = BarlowZeroNetwork(SMALL_OBS, 3, **{**SMALL, "consistency_loss": "simsiam"}).train()
    state = simsiam.representation(_uint8_obs(3))
    assert simsiam.project(state, branch="online").shape == (3, 64)  # through the predictor
    target = simsiam.project(state, branch="target")
    assert target.shape == (3, 64) and not target.requires_grad

    none = BarlowZeroNetwork(SMALL_OBS, 3, **{**SMALL, "consistency_loss": "none"})
    assert none.projection is None and none.predictor is None
    assert not any("projection" in n or "predictor" in n for n, _ in none.named_parameters())
    with pytest.raises(ValueError, match="none"):
        none.project(torch.zeros(2, 16, 2, 2))


def test_unknown_consistency_loss():
    with pytest.raises(ValueError, match="'barlow', 'simsiam', 'none'"):
        BarlowZeroNetwork(SMALL_OBS, 3, **{**SMALL, "consistency_loss": "byol"})


def test_wrong_observations_are_refused():
    net = BarlowZeroNetwork(SMALL_OBS, 3, **SMALL).eval()
    with pytest.raises(ValueError, match=r"\[B, 6, 24, 24\].*uint8"):
        net.initial_inference(_uint8_obs(2, (6, 20, 24)))
    with pytest.raises(ValueError, match="uint8"):
        net.initial_inference(_uint8_obs(2).long())
    with pytest.raises(ValueError, match=r"\[B, 6, 24, 24\]"):
        net.initial_inference(_uint8_obs(2)[0])  # unbatched
    # Float images on the 0..255 scale (augmented) are accepted and match uint8 input.
    obs = _uint8_obs(2)
    with torch.no_grad():
        torch.testing.assert_close(net.representation(obs.float()), net.representation(obs))
    vec = BarlowZeroNetwork((8,), 2, **SMALL).eval()
    with pytest.raises(ValueError, match=r"\[B, 8\].*float32"):
        vec.initial_inference(torch.zeros(2, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        vec.initial_inference(torch.zeros(2, 9))
    with pytest.raises(ValueError, match="one action per state"):
        vec.dynamics(torch.zeros(2, 16, 1, 1), vec.initial_lstm_state(2), torch.tensor([0]))


def test_value_prefix_lstm_reset():
    torch.manual_seed(0)
    net = BarlowZeroNetwork(SMALL_OBS, 3, **SMALL).eval()
    # Un-zero the last value-prefix layer so that the logits depend on the LSTM state.
    last = net.dynamics_network.fc[-1]
    torch.nn.init.normal_(last.weight)
    with torch.no_grad():
        state = net.representation(_uint8_obs(4))
        action = torch.tensor([0, 1, 2, 1])
        fresh = net.initial_lstm_state(4)
        assert all(t.shape == (1, 4, 32) and not t.any() for t in fresh)
        s1, carried, _ = net.dynamics(state, fresh, action)
        assert carried[0].abs().sum() > 0
        _, _, prefix_carried = net.dynamics(s1, carried, action)
        zeroed = tuple(torch.zeros_like(t) for t in carried)
        _, _, prefix_zeroed = net.dynamics(s1, zeroed, action)
        _, _, prefix_fresh = net.dynamics(s1, net.initial_lstm_state(4), action)
    assert not torch.allclose(prefix_carried, prefix_zeroed)
    torch.testing.assert_close(prefix_zeroed, prefix_fresh, rtol=0, atol=0)


def test_lstm_step_equals_nn_lstm():
    torch.manual_seed(0)
    dyn = BarlowZeroNetwork(SMALL_OBS, 3, **SMALL).dynamics_network
    x = torch.randn(5, dyn.lstm.input_size, requires_grad=True)
    state = (torch.randn(1, 5, 32), torch.randn(1, 5, 32))
    h, c = dyn.lstm_step(x, state)
    out, (h_ref, c_ref) = dyn.lstm(x[None], state)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)
    torch.testing.assert_close(h, out)
    (grad,) = torch.autograd.grad((h * c).sum(), x)
    (grad_ref,) = torch.autograd.grad((h_ref * c_ref).sum(), x)
    torch.testing.assert_close(grad, grad_ref)


def _unroll_losses(net, obs, actions, target_obs, targets, consistency):
    """EfficientZero's unroll (k = 0..K) with each loss term returned separately."""
    support = net.value_support_size
    batch, num_unroll = actions.shape
    state = net.representation(obs)
    policy, value = net.prediction(state)
    value_ce = categorical_cross_entropy(value, scalar_to_support(targets["value"][:, 0], support))
    policy_ce = categorical_cross_entropy(policy, targets["policy"][:, 0])
    prefix_ce = torch.zeros(batch)
    cons = torch.zeros(())
    lstm = net.initial_lstm_state(batch)
    for k in range(num_unroll):
        state, lstm, prefix = net.dynamics(state, lstm, actions[:, k])
        state = state * 0.5 + state.detach() * 0.5
        policy, value = net.prediction(state)
        value_ce = value_ce + categorical_cross_entropy(
            value, scalar_to_support(targets["value"][:, k + 1], support)
        )
        policy_ce = policy_ce + categorical_cross_entropy(policy, targets["policy"][:, k + 1])
        prefix_ce = prefix_ce + categorical_cross_entropy(
            prefix, scalar_to_support(targets["prefix"][:, k], net.reward_support_size)
        )
        target_state = net.representation(target_obs[:, k])
        if consistency == "barlow":
            cons = cons + barlow_twins_loss(net.project(state), net.project(target_state))
        else:
            cons = (
                cons
                + simsiam_loss(
                    net.project(state, branch="online"), net.project(target_state, branch="target")
                ).mean()
            )
    return {
        "value": value_ce.mean(),
        "value_prefix": prefix_ce.mean(),
        "policy": policy_ce.mean(),
        "consistency": cons,
    }


@pytest.mark.parametrize("consistency", ["barlow", "simsiam"])
def test_sgd_drives_every_loss_term_down(consistency):
    torch.manual_seed(0)
    batch, num_unroll, num_actions = 16, 3, 4
    net = BarlowZeroNetwork(SMALL_OBS, num_actions, **{**SMALL, "consistency_loss": consistency})
    net.train()
    gen = torch.Generator().manual_seed(1)
    obs = _uint8_obs(batch, seed=2)
    target_obs = _uint8_obs(batch * num_unroll, seed=3).view(batch, num_unroll, *SMALL_OBS)
    actions = torch.randint(0, num_actions, (batch, num_unroll), generator=gen)
    targets = {
        "value": torch.empty(batch, num_unroll + 1).uniform_(-5, 5, generator=gen),
        "prefix": torch.empty(batch, num_unroll).uniform_(0, 3, generator=gen),
        "policy": torch.softmax(
            3 * torch.randn(batch, num_unroll + 1, num_actions, generator=gen), -1
        ),
    }
    weights = {"value": 0.25, "value_prefix": 1.0, "policy": 1.0, "consistency": 0.1}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(40):
        losses = _unroll_losses(net, obs, actions, target_obs, targets, consistency)
        if first is None:
            first = {k: float(v.detach()) for k, v in losses.items()}
        total = sum(weights[k] * v for k, v in losses.items())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    with torch.no_grad():
        last = {
            k: float(v)
            for k, v in _unroll_losses(net, obs, actions, target_obs, targets, consistency).items()
        }
    for key in first:
        # Every term falls by at least 10% of its initial size.
        assert last[key] < first[key] - 0.1 * abs(first[key]), (
            f"{key}: {first[key]:.4f} -> {last[key]:.4f}"
        )


@pytest.fixture
def deterministic_torch():
    """Deterministic algorithms on, as RLlib's seeding leaves them on CPU; restored afterwards."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.utils.deterministic.fill_uninitialized_memory = before[1]


def test_skipping_the_uninitialized_memory_fill_changes_no_result(deterministic_torch):
    # The module turns torch's NaN fill of new tensors off (skip_uninitialized_memory_fill). An
    # image unroll with the consistency branch, its loss and every gradient must be bit for bit
    # what they are with the fill on: a NaN read anywhere would show up as a difference.
    torch.manual_seed(3)
    net = BarlowZeroNetwork(SMALL_OBS, 4, **SMALL)
    obs = _uint8_obs(8, seed=1)
    target_obs = _uint8_obs(8, seed=2)
    actions = torch.randint(0, 4, (8, 3), generator=torch.Generator().manual_seed(4))

    def unroll_and_backward(fill: bool) -> list[torch.Tensor]:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        net.zero_grad(set_to_none=True)
        state = net.representation(obs)
        lstm_state = net.initial_lstm_state(8, obs.device)
        outputs = list(net.prediction(state))
        for k in range(actions.shape[1]):
            state, lstm_state, prefix = net.dynamics(state, lstm_state, actions[:, k])
            outputs += [prefix, *net.prediction(state)]
        outputs += [net.project(state, branch="online"),
                    net.project(net.representation(target_obs), branch="target")]
        loss = sum(o.float().square().mean() for o in outputs)
        loss.backward()
        grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
        return [o.detach() for o in outputs] + [loss.detach()] + grads

    with_fill = unroll_and_backward(True)
    without_fill = unroll_and_backward(False)
    assert len(with_fill) == len(without_fill) > 20
    for a, b in zip(with_fill, without_fill, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_building_the_module_turns_the_fill_off(deterministic_torch):
    torch.utils.deterministic.fill_uninitialized_memory = True
    RLModuleSpec(
        module_class=BarlowZeroTorchRLModule,
        observation_space=gym.spaces.Box(-1, 1, (4,), np.float32),
        action_space=gym.spaces.Discrete(2),
        model_config=BarlowZeroConfig().training(mlp_hidden_layers=[16]).model_config,
    ).build()
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert torch.are_deterministic_algorithms_enabled()  # determinism itself is kept
