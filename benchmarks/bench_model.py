"""Model cost of BarlowZero with the paper's network (Atari, (12, 96, 96), 4 actions).

Measures, as the median of `--repeats` timed runs after one warm-up:

- search: `initial_inference` + `--num-simulations` `recurrent_inference` calls (the model cost of
  one batched search, eval mode, torch.no_grad) for 1, 8 and 64 roots. Each simulation copies
  the value prefix, value and policy logits to the host, as the search does.
- train fwd+bwd: one forward and backward pass of the 5-step unroll at batch 64 with the
  projection / Barlow Twins consistency branch: value, value-prefix and policy cross-entropies
  plus Barlow Twins between the projections of the dynamics' states and of the representation of
  the true next observations (both branches with gradient), the hidden-state gradient halved at
  each step, the paper's loss coefficients.
- train step: the same plus the shift+intensity augmentation of both views and an SGD step
  (lr 0.01, momentum 0.9, weight decay 5e-4).

Usage: python benchmarks/bench_model.py [--device cuda] [--repeats 3] [--threads N]
(from a checkout that is not pip-installed: PYTHONPATH=. python benchmarks/bench_model.py)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from rllib_barlowzero.torch.augmentations import augment
from rllib_barlowzero.torch.losses import (
    barlow_twins_loss,
    categorical_cross_entropy,
    scalar_to_support,
)
from rllib_barlowzero.torch.networks import BarlowZeroNetwork

OBS_SHAPE = (12, 96, 96)
NUM_ACTIONS = 4
# The paper's Table 2.
REWARD_COEFF, VALUE_COEFF, POLICY_COEFF, CONSISTENCY_COEFF = 1.0, 0.25, 10.0, 0.001
LSTM_HORIZON = 5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def search_model_cost(
    net: BarlowZeroNetwork, batch: int, num_simulations: int, device: torch.device
) -> Callable[[], None]:
    """One search's model calls: a chain of `num_simulations` recurrent steps from the roots."""
    gen = torch.Generator().manual_seed(batch)
    obs = torch.randint(0, 256, (batch, *OBS_SHAPE), dtype=torch.uint8, generator=gen).to(device)
    actions = torch.randint(0, NUM_ACTIONS, (num_simulations, batch), generator=gen).to(device)

    @torch.no_grad()
    def run() -> None:
        root = net.initial_inference(obs)
        root.value.cpu()
        state, lstm = root.state, net.initial_lstm_state(batch, device)
        for sim in range(num_simulations):
            if sim % LSTM_HORIZON == 0:
                lstm = net.initial_lstm_state(batch, device)
            out = net.recurrent_inference(state, lstm, actions[sim])
            state, lstm = out.state, out.lstm_state
            torch.cat([out.value_prefix[:, None], out.value[:, None], out.policy_logits], 1).cpu()

    return run


def unroll_loss(
    net: BarlowZeroNetwork,
    obs: torch.Tensor,
    target_obs: torch.Tensor,
    actions: torch.Tensor,
    target_value: torch.Tensor,
    target_prefix: torch.Tensor,
    target_policy: torch.Tensor,
) -> torch.Tensor:
    """EfficientZero's K-step unroll loss with the Barlow Twins consistency term.

    obs [B, *obs], target_obs [B, K, *obs], actions [B, K], target_value [B, K+1],
    target_prefix [B, K], target_policy [B, K+1, A].
    """
    batch, num_unroll = actions.shape
    vs, rs = net.value_support_size, net.reward_support_size
    state = net.representation(obs)
    policy, value = net.prediction(state)
    loss = VALUE_COEFF * categorical_cross_entropy(value, scalar_to_support(target_value[:, 0], vs))
    loss = loss + POLICY_COEFF * categorical_cross_entropy(policy, target_policy[:, 0])
    loss = loss.mean()
    # Both branches of Barlow Twins carry gradient: the targets' representation is not detached.
    targets = net.representation(target_obs.flatten(0, 1))
    targets = targets.view(batch, num_unroll, *net.latent_shape)
    lstm = net.initial_lstm_state(batch, obs.device)
    for k in range(num_unroll):
        if k % LSTM_HORIZON == 0:
            lstm = net.initial_lstm_state(batch, obs.device)
        state, lstm, prefix = net.dynamics(state, lstm, actions[:, k])
        state = state * 0.5 + state.detach() * 0.5  # halve the gradient through each step
        policy, value = net.prediction(state)
        step = (
            REWARD_COEFF
            * categorical_cross_entropy(prefix, scalar_to_support(target_prefix[:, k], rs))
            + VALUE_COEFF
            * categorical_cross_entropy(value, scalar_to_support(target_value[:, k + 1], vs))
            + POLICY_COEFF * categorical_cross_entropy(policy, target_policy[:, k + 1])
        )
        consistency = barlow_twins_loss(net.project(state), net.project(targets[:, k]))
        loss = loss + step.mean() + CONSISTENCY_COEFF * consistency
    return loss / num_unroll


def training_cost(
    net: BarlowZeroNetwork,
    batch: int,
    num_unroll: int,
    device: torch.device,
    full_step: bool,
) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (batch, *OBS_SHAPE), dtype=torch.uint8, generator=gen)
    target_obs = torch.randint(
        0, 256, (batch, num_unroll, *OBS_SHAPE), dtype=torch.uint8, generator=gen
    )
    actions = torch.randint(0, NUM_ACTIONS, (batch, num_unroll), generator=gen)
    target_value = torch.empty(batch, num_unroll + 1).uniform_(-10, 10, generator=gen)
    target_prefix = torch.empty(batch, num_unroll).uniform_(0, 5, generator=gen)
    target_policy = torch.softmax(
        torch.randn(batch, num_unroll + 1, NUM_ACTIONS, generator=gen), -1
    )
    tensors = [t.to(device) for t in (obs, target_obs, actions, target_value, target_prefix)]
    obs, target_obs, actions, target_value, target_prefix = tensors
    target_policy = target_policy.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    aug_gen = torch.Generator().manual_seed(1)

    def run() -> None:
        o, t = obs, target_obs
        if full_step:
            names = ["shift", "intensity"]
            o = augment(o.float() / 255.0, names, aug_gen) * 255.0
            flat = augment(t.flatten(0, 1).float() / 255.0, names, aug_gen) * 255.0
            t = flat.view(*t.shape)
        loss = unroll_loss(net, o, t, actions, target_value, target_prefix, target_policy)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if full_step:
            optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--num-simulations", type=int, default=50)
    parser.add_argument("--roots", default="1,8,64", help="comma-separated search batch sizes")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--num-unroll", type=int, default=5)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = BarlowZeroNetwork(OBS_SHAPE, NUM_ACTIONS).to(device)  # the paper's configuration
    params = sum(p.numel() for p in net.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"BarlowZero paper network, {params / 1e6:.2f} M parameters, device {name}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"median of {args.repeats}"
    )
    rows = []
    net.eval()
    for roots in (int(r) for r in args.roots.split(",")):
        seconds = _median_time(
            search_model_cost(net, roots, args.num_simulations, device), device, args.repeats
        )
        calls = args.num_simulations + 1
        rows.append(
            (
                f"search model cost, {roots} roots ({args.num_simulations} sims)",
                seconds,
                f"{1e3 * seconds / calls:.2f} ms/call, "
                f"{roots * args.num_simulations / seconds:,.0f} root-sims/s",
            )
        )
    net.train()
    for full_step, label in ((False, "train fwd+bwd"), (True, "train step (+aug, SGD)")):
        seconds = _median_time(
            training_cost(net, args.train_batch, args.num_unroll, device, full_step),
            device,
            args.repeats,
        )
        rows.append(
            (
                f"{label}, batch {args.train_batch}, K={args.num_unroll}",
                seconds,
                f"{args.train_batch / seconds:,.1f} samples/s",
            )
        )

    width = max(len(r[0]) for r in rows)
    print(f"| {'what':<{width}} | {'median s':>9} | rate |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|------|")
    for what, seconds, rate in rows:
        print(f"| {what:<{width}} | {seconds:9.4f} | {rate} |")


if __name__ == "__main__":
    main()
