"""BarlowZero's networks: representation h, dynamics g (with the value-prefix LSTM), prediction f,
and the projection (and, for SimSiam only, predictor) of the consistency branch.

The architecture is the paper's appendix, read with EfficientZero where the paper is loose
(docs/design.md section 4):

- representation h (images, `downsample=True`): conv 3x3 s2 -> channels/2 (BN, ReLU) ->
  res(channels/2) -> res-downsample s2 -> channels -> res -> avgpool 3x3 s2 p1 -> res ->
  avgpool 3x3 s2 p1, then `blocks` residual blocks (96x96 -> channels x 6 x 6). As in
  EfficientZero, the paper's last "res 64" *is* the `blocks` stack (blocks=1 gives the paper's
  list exactly) and no BN/ReLU follows the pooling layers. `downsample=False` (small images):
  conv 3x3 s1 -> channels (BN, ReLU), then `blocks` residual blocks, no change of resolution.
  Which one: `choose_downsample(observation_shape)`, the choice the RLModule makes: the paper's
  stack when the smaller image side is at least `DOWNSAMPLE_MIN_SIZE` = 32 pixels (32 -> 2x2,
  64 -> 4x4, 84 or 96 -> 6x6 latents), the stride-1 stem below it (MinAtar's 10x10 keeps a
  10x10 latent; x1/16 would leave 1x1).
  Vector observations: an MLP (`mlp_hidden_layers`, Linear+BN+ReLU) to `channels` features
  (Linear+BN+ReLU), viewed as a [B, channels, 1, 1] latent, then `blocks` residual blocks, so the
  dynamics and prediction networks below are the same for both.
- dynamics g: [state, action plane] (channels + 1; the plane is action / num_actions everywhere,
  EfficientZero's encoding) -> conv 3x3 -> channels + BN, + state (residual), ReLU -> `blocks`
  residual blocks = next state. Value-prefix head on that state: conv 1x1 ->
  reduced_channels_reward (BN, ReLU) -> flatten -> LSTM(lstm_hidden_size), one step -> BN, ReLU ->
  FC `resnet_fc_reward_layers` (BN, ReLU) -> 2 * reward_support_size + 1 logits.
- prediction f: `blocks` residual blocks, then value and policy heads: conv 1x1 ->
  reduced_channels_value/policy (BN, ReLU) -> flatten -> FC `resnet_fc_*_layers` (BN, ReLU) ->
  2 * value_support_size + 1 value logits / num_actions policy logits.
- The last linear layers of the value, value-prefix and policy heads start at zero (EfficientZero's
  `init_zero`): at initialisation values and value prefixes are 0 and policies uniform.
- With `normalize_state=True` hidden states are min-max normalised to [0, 1] per sample (over
  all of a sample's C*H*W features) after the representation and after the dynamics (MuZero's
  scaling; EfficientZero's `renormalize`, which its Atari config leaves off: `state_norm=False`).
  Off by default, as EfficientZero's Atari model. The value-prefix head reads the dynamics' state
  before any normalisation, as in EfficientZero.
- projection (unless consistency_loss="none"): flatten (C*H*W, 2304 for Atari) -> proj_hid
  (BN, ReLU) -> proj_hid (BN, ReLU) -> proj_out (BN). For "simsiam" only, EfficientZero's
  predictor: proj_out -> pred_hid (BN, ReLU) -> pred_out.

Every BatchNorm uses momentum `bn_mt`. Like any BatchNorm network, a training-mode forward needs
at least 2 samples; search runs the network in eval mode.

Value and value prefix use separate supports, `value_support_size` and `reward_support_size`;
both default to `support_size` (300 -> 601 bins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rllib_barlowzero.torch.losses import check_consistency_loss, support_to_scalar

__all__ = [
    "BarlowZeroNetwork",
    "DOWNSAMPLE_MIN_SIZE",
    "InitialOutput",
    "LSTMState",
    "RecurrentOutput",
    "ResidualBlock",
    "choose_downsample",
    "normalize_hidden_state",
]

LSTMState = tuple[torch.Tensor, torch.Tensor]
"""(h, c), each [1, B, lstm_hidden_size]."""

STATE_NORM_EPS = 1e-5

DOWNSAMPLE_MIN_SIZE = 32
"""Images whose smaller side (H or W) is at least this many pixels get the paper's x1/16
downsampling representation; smaller ones the stride-1 stem (see `choose_downsample`)."""


def choose_downsample(observation_shape: Sequence[int]) -> bool:
    """The representation for an observation shape: True (the paper's x1/16 ResNet stack) for
    images (C, H, W) with min(H, W) >= `DOWNSAMPLE_MIN_SIZE`, False (one stride-1 conv, full
    resolution) for smaller images; vectors (D,) have no downsampling (False)."""
    shape = tuple(int(d) for d in observation_shape)
    return len(shape) == 3 and min(shape[1:]) >= DOWNSAMPLE_MIN_SIZE


class InitialOutput(NamedTuple):
    """Output of `BarlowZeroNetwork.initial_inference` (B roots, A actions, S value bins)."""

    state: torch.Tensor  # [B, C, H', W'] hidden state
    value: torch.Tensor  # [B] scalar value
    value_logits: torch.Tensor  # [B, S]
    policy_logits: torch.Tensor  # [B, A]


class RecurrentOutput(NamedTuple):
    """Output of `BarlowZeroNetwork.recurrent_inference` (S_v value bins, S_r value-prefix bins)."""

    state: torch.Tensor  # [B, C, H', W'] next hidden state
    lstm_state: LSTMState  # (h, c), each [1, B, lstm_hidden_size]
    value_prefix: torch.Tensor  # [B] scalar value prefix
    value: torch.Tensor  # [B] scalar value of the next state
    value_prefix_logits: torch.Tensor  # [B, S_r]
    value_logits: torch.Tensor  # [B, S_v]
    policy_logits: torch.Tensor  # [B, A]


def flush_denormals(enabled: bool) -> None:
    """Sets (or clears) the CPU's flush-to-zero / denormals-are-zero mode for this thread.

    Weights and optimizer state that only weight decay moves (a 3x3 conv tap that only ever sees
    padding, a projector column fed by a dead feature) shrink into the denormal range (below
    1.2e-38), where each multiply costs microcode assists: a `Linear(3200, 256)` over 384 rows
    took 1380 ms with denormal inputs against 5.2 ms with normal ones on our CPU (7.8 ms with
    this mode), and MinAtar runs slowed 3x after ~6k training steps. The mode treats such values
    as 0, which changes no result above 1.2e-38. It is per thread, numpy included; threads started
    afterwards (torch's intra-op pool, the reanalyze thread, Serve's search thread) inherit it,
    so it is set before they start. GPUs are unaffected.
    """
    torch.set_flush_denormal(enabled)


def skip_uninitialized_memory_fill() -> None:
    """Stops torch from filling every new tensor with NaN before an op writes it.

    RLlib seeds torch with `use_deterministic_algorithms(True)` on CPU builds, which also turns on
    `torch.utils.deterministic.fill_uninitialized_memory`: a debugging aid that catches ops reading
    memory they never wrote. Every op's output buffer is then written twice; on the Breakout CPU
    recipe that made a learner update, a reanalyze batch and a self-play step 5-6% slower, 3-7%
    on CartPole (benchmarks/bench_memory_fill.py). Our ops write all they return, so turning the
    fill off changes no result (tests/test_networks.py checks an unroll and its gradients bit for
    bit); deterministic algorithms stay on. The flag is process-wide.
    """
    torch.utils.deterministic.fill_uninitialized_memory = False


def flush_denormals_from(model_config: Mapping[str, Any]) -> bool:
    """`flush_denormal` of a module's config; module checkpoints from before the setting lack the
    key and ran without the mode."""
    return bool(model_config.get("flush_denormal", False))


def normalize_hidden_state(state: torch.Tensor) -> torch.Tensor:
    """Min-max normalises each sample of [B, ...] to [0, 1] over all its features."""
    flat = state.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    scale = (high - low).clamp_min(STATE_NORM_EPS)
    return ((flat - low) / scale).reshape_as(state)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + identity, ReLU. With stride 2 or a change of width the
    identity goes through a 3x3 conv with that stride (EfficientZero's downsample block)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, momentum: float = 0.1):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels, momentum=momentum)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=momentum)
        self.downsample = (
            _conv3x3(in_channels, out_channels, stride)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


def _mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    momentum: float,
    zero_last: bool = False,
) -> nn.Sequential:
    """Linear+BN+ReLU per hidden size, then a plain Linear (zero-initialised if `zero_last`)."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.BatchNorm1d(size, momentum=momentum), nn.ReLU()]
        width = size
    last = nn.Linear(width, out_features)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


def _res_stack(blocks: int, channels: int, momentum: float) -> nn.Sequential:
    return nn.Sequential(
        *[ResidualBlock(channels, channels, momentum=momentum) for _ in range(blocks)]
    )


def _halve(n: int) -> int:
    """Output size of a 3x3 conv or pool with stride 2 and padding 1."""
    return (n + 1) // 2


class ImageRepresentation(nn.Module):
    """[B, C_obs, H, W] float in [0, 1] -> [B, channels, H', W'] (ceil(H / 16) if downsample)."""

    def __init__(
        self, in_channels: int, channels: int, blocks: int, downsample: bool, momentum: float
    ):
        super().__init__()
        if downsample:
            half = channels // 2
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, half, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(half, momentum=momentum),
                nn.ReLU(),
                ResidualBlock(half, half, momentum=momentum),
                ResidualBlock(half, channels, stride=2, momentum=momentum),
                ResidualBlock(channels, channels, momentum=momentum),
                nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
                ResidualBlock(channels, channels, momentum=momentum),
                nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                _conv3x3(in_channels, channels),
                nn.BatchNorm2d(channels, momentum=momentum),
                nn.ReLU(),
            )
        self.blocks = _res_stack(blocks, channels, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


class VectorRepresentation(nn.Module):
    """[B, D] float -> [B, channels, 1, 1]: MLP (Linear+BN+ReLU layers), then res blocks."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        channels: int,
        blocks: int,
        momentum: float,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in (*hidden, channels):
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size, momentum=momentum), nn.ReLU()]
            width = size
        self.mlp = nn.Sequential(*layers)
        self.blocks = _res_stack(blocks, channels, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.mlp(x)[:, :, None, None])


class DynamicsNetwork(nn.Module):
    """(state [B, C, H, W], action plane [B, 1, H, W], lstm state) ->
    (next state [B, C, H, W] before normalisation, lstm state, value-prefix logits [B, S_r])."""

    def __init__(
        self,
        channels: int,
        blocks: int,
        spatial: int,
        reduced_channels_reward: int,
        fc_layers: Sequence[int],
        lstm_hidden_size: int,
        support_bins: int,
        momentum: float,
    ):
        super().__init__()
        self.conv = _conv3x3(channels + 1, channels)
        self.bn = nn.BatchNorm2d(channels, momentum=momentum)
        self.blocks = _res_stack(blocks, channels, momentum)
        self.conv1x1_reward = nn.Conv2d(channels, reduced_channels_reward, 1)
        self.bn_reward = nn.BatchNorm2d(reduced_channels_reward, momentum=momentum)
        # Holds the LSTM's parameters; `lstm_step` runs it one step at a time.
        self.lstm = nn.LSTM(
            input_size=reduced_channels_reward * spatial, hidden_size=lstm_hidden_size
        )
        self.bn_value_prefix = nn.BatchNorm1d(lstm_hidden_size, momentum=momentum)
        self.fc = _mlp(lstm_hidden_size, fc_layers, support_bins, momentum, zero_last=True)

    def forward(
        self, state: torch.Tensor, action_plane: torch.Tensor, lstm_state: LSTMState
    ) -> tuple[torch.Tensor, LSTMState, torch.Tensor]:
        x = self.bn(self.conv(torch.cat([state, action_plane], dim=1)))
        next_state = self.blocks(F.relu(x + state))
        r = F.relu(self.bn_reward(self.conv1x1_reward(next_state)))
        h, c = self.lstm_step(r.flatten(1), lstm_state)
        prefix = F.relu(self.bn_value_prefix(h[0]))
        return next_state, (h, c), self.fc(prefix)

    def lstm_step(self, x: torch.Tensor, lstm_state: LSTMState) -> LSTMState:
        """One time step of `self.lstm`: x [B, in], (h, c) each [1, B, L] -> new (h, c).

        The equations of `nn.LSTM` (gate order i, f, g, o) written out: the same values as
        `self.lstm(x[None], lstm_state)`, but several times faster on CPU for a single step than
        its oneDNN path, forward and backward.
        """
        h, c = lstm_state
        lstm = self.lstm
        gates = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0) + F.linear(
            h[0], lstm.weight_hh_l0, lstm.bias_hh_l0
        )
        i, f, g, o = gates.chunk(4, dim=1)
        c_next = torch.sigmoid(f) * c[0] + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        return h_next.unsqueeze(0), c_next.unsqueeze(0)


class PredictionNetwork(nn.Module):
    """state [B, C, H, W] -> (policy logits [B, A], value logits [B, S_v])."""

    def __init__(
        self,
        channels: int,
        blocks: int,
        spatial: int,
        num_actions: int,
        reduced_channels_value: int,
        reduced_channels_policy: int,
        fc_value_layers: Sequence[int],
        fc_policy_layers: Sequence[int],
        support_bins: int,
        momentum: float,
    ):
        super().__init__()
        self.blocks = _res_stack(blocks, channels, momentum)
        self.conv1x1_value = nn.Conv2d(channels, reduced_channels_value, 1)
        self.bn_value = nn.BatchNorm2d(reduced_channels_value, momentum=momentum)
        self.conv1x1_policy = nn.Conv2d(channels, reduced_channels_policy, 1)
        self.bn_policy = nn.BatchNorm2d(reduced_channels_policy, momentum=momentum)
        self.fc_value = _mlp(
            reduced_channels_value * spatial, fc_value_layers, support_bins, momentum, True
        )
        self.fc_policy = _mlp(
            reduced_channels_policy * spatial, fc_policy_layers, num_actions, momentum, True
        )

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.blocks(state)
        value = F.relu(self.bn_value(self.conv1x1_value(x))).flatten(1)
        policy = F.relu(self.bn_policy(self.conv1x1_policy(x))).flatten(1)
        return self.fc_policy(policy), self.fc_value(value)


class BarlowZeroNetwork(nn.Module):
    """Representation, dynamics, prediction and projection of BarlowZero (see the module doc).

    Args:
        observation_shape: (C * stack, H, W) for images (Atari: (12, 96, 96)), or (D * stack,)
            for vector observations.
        num_actions: size of the discrete action space.
        channels, blocks, reduced_channels_*, resnet_fc_*_layers, lstm_hidden_size, proj_hid,
            proj_out, pred_hid, pred_out, bn_mt: the paper's Table 2 sizes.
        support_size: default for both supports (2 * S + 1 bins).
        value_support_size, reward_support_size: override the value / value-prefix supports.
        consistency_loss: "barlow" (projection), "simsiam" (projection + predictor) or "none"
            (neither).
        mlp_hidden_layers: hidden sizes of the MLP representation of vector observations.
        downsample: images only; the ResNet downsampling stack (x1/16), or one stride-1 conv.
            The RLModule passes `choose_downsample(observation_shape)`.
        normalize_state: min-max normalise hidden states per sample (MuZero; EfficientZero's
            Atari model does not, hence the default).
    """

    def __init__(
        self,
        observation_shape: Sequence[int],
        num_actions: int,
        *,
        channels: int = 64,
        blocks: int = 1,
        reduced_channels_reward: int = 16,
        reduced_channels_value: int = 16,
        reduced_channels_policy: int = 16,
        resnet_fc_reward_layers: Sequence[int] = (32,),
        resnet_fc_value_layers: Sequence[int] = (32,),
        resnet_fc_policy_layers: Sequence[int] = (32,),
        lstm_hidden_size: int = 512,
        support_size: int = 300,
        value_support_size: int | None = None,
        reward_support_size: int | None = None,
        proj_hid: int = 1024,
        proj_out: int = 1024,
        pred_hid: int = 512,
        pred_out: int = 1024,
        bn_mt: float = 0.1,
        consistency_loss: str = "barlow",
        mlp_hidden_layers: Sequence[int] = (64, 64),
        downsample: bool = True,
        normalize_state: bool = False,
    ):
        super().__init__()
        self.observation_shape = tuple(int(d) for d in observation_shape)
        if len(self.observation_shape) not in (1, 3) or min(self.observation_shape) < 1:
            raise ValueError(
                "observation_shape must be (C, H, W) for images or (D,) for vectors, got "
                f"{self.observation_shape}"
            )
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        self.consistency_loss = check_consistency_loss(consistency_loss)
        self.num_actions = int(num_actions)
        self.is_image = len(self.observation_shape) == 3
        self.value_support_size = int(
            support_size if value_support_size is None else value_support_size
        )
        self.reward_support_size = int(
            support_size if reward_support_size is None else reward_support_size
        )
        self.lstm_hidden_size = int(lstm_hidden_size)
        self.normalize_state = bool(normalize_state)

        if self.is_image:
            c, h, w = self.observation_shape
            if downsample:
                for _ in range(4):
                    h, w = _halve(h), _halve(w)
            self.representation_network: nn.Module = ImageRepresentation(
                c, channels, blocks, downsample, bn_mt
            )
        else:
            h = w = 1
            self.representation_network = VectorRepresentation(
                self.observation_shape[0], mlp_hidden_layers, channels, blocks, bn_mt
            )
        self.latent_shape = (int(channels), h, w)
        spatial = h * w

        self.dynamics_network = DynamicsNetwork(
            channels,
            blocks,
            spatial,
            reduced_channels_reward,
            resnet_fc_reward_layers,
            lstm_hidden_size,
            2 * self.reward_support_size + 1,
            bn_mt,
        )
        self.prediction_network = PredictionNetwork(
            channels,
            blocks,
            spatial,
            num_actions,
            reduced_channels_value,
            reduced_channels_policy,
            resnet_fc_value_layers,
            resnet_fc_policy_layers,
            2 * self.value_support_size + 1,
            bn_mt,
        )

        self.projection: nn.Module | None = None
        self.predictor: nn.Module | None = None
        if self.consistency_loss != "none":
            self.projection = nn.Sequential(
                nn.Linear(channels * spatial, proj_hid),
                nn.BatchNorm1d(proj_hid, momentum=bn_mt),
                nn.ReLU(),
                nn.Linear(proj_hid, proj_hid),
                nn.BatchNorm1d(proj_hid, momentum=bn_mt),
                nn.ReLU(),
                nn.Linear(proj_hid, proj_out),
                nn.BatchNorm1d(proj_out, momentum=bn_mt),
            )
        if self.consistency_loss == "simsiam":
            self.predictor = nn.Sequential(
                nn.Linear(proj_out, pred_hid),
                nn.BatchNorm1d(pred_hid, momentum=bn_mt),
                nn.ReLU(),
                nn.Linear(pred_hid, pred_out),
            )

    # -- the three functions -------------------------------------------------------------------

    def _check_obs(self, obs: torch.Tensor) -> None:
        if self.is_image:
            ok_dtype = obs.dtype == torch.uint8 or obs.is_floating_point()
            expected = "uint8 (or float on the same 0..255 scale)"
        else:
            ok_dtype = obs.is_floating_point()
            expected = "float32"
        if tuple(obs.shape[1:]) != self.observation_shape or obs.dim() < 2 or not ok_dtype:
            raise ValueError(
                f"expected observations of shape [B, {', '.join(map(str, self.observation_shape))}]"
                f" and dtype {expected}, got shape {list(obs.shape)} and dtype {obs.dtype}"
            )

    def _normalize(self, state: torch.Tensor) -> torch.Tensor:
        return normalize_hidden_state(state) if self.normalize_state else state

    def representation(self, obs: torch.Tensor) -> torch.Tensor:
        """h: observations [B, *observation_shape] -> hidden state [B, *latent_shape].

        Images are uint8 (frames stacked on the channel axis, oldest first) and are divided by 255
        here; vector observations are float.
        """
        self._check_obs(obs)
        param = self.dynamics_network.conv.weight
        x = obs.to(dtype=param.dtype)
        if self.is_image:
            x = x / 255.0
        return self._normalize(self.representation_network(x))

    def _action_plane(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        batch = state.shape[0]
        if action.numel() != batch:
            raise ValueError(
                f"expected one action per state ([{batch}] int64), got shape {list(action.shape)}"
            )
        plane = action.reshape(batch, 1, 1, 1).to(state.dtype) / self.num_actions
        return plane.expand(batch, 1, *state.shape[2:])

    def dynamics(
        self, state: torch.Tensor, lstm_state: LSTMState, action: torch.Tensor
    ) -> tuple[torch.Tensor, LSTMState, torch.Tensor]:
        """g: (state [B, *latent_shape], (h, c) each [1, B, L], action int64 [B]) ->
        (next state [B, *latent_shape], (h, c), value-prefix logits [B, 2 * reward_support + 1]).

        The caller zeroes the LSTM state at the start of each `lstm_horizon_len` window.
        """
        if tuple(state.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"expected hidden states of shape [B, {', '.join(map(str, self.latent_shape))}], "
                f"got {list(state.shape)}"
            )
        next_state, lstm_state, prefix_logits = self.dynamics_network(
            state, self._action_plane(state, action), lstm_state
        )
        return self._normalize(next_state), lstm_state, prefix_logits

    def prediction(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f: state [B, *latent_shape] -> (policy logits [B, A], value logits [B, 2 * S_v + 1])."""
        return self.prediction_network(state)

    # -- search entry points -------------------------------------------------------------------

    def initial_inference(self, obs: torch.Tensor) -> InitialOutput:
        """h then f on observations [B, *observation_shape]; value as a scalar [B]."""
        state = self.representation(obs)
        policy_logits, value_logits = self.prediction(state)
        value = support_to_scalar(value_logits, self.value_support_size)
        return InitialOutput(state, value, value_logits, policy_logits)

    def recurrent_inference(
        self, state: torch.Tensor, lstm_state: LSTMState, action: torch.Tensor
    ) -> RecurrentOutput:
        """g then f; value prefix and value as scalars [B]."""
        next_state, lstm_state, prefix_logits = self.dynamics(state, lstm_state, action)
        policy_logits, value_logits = self.prediction(next_state)
        return RecurrentOutput(
            state=next_state,
            lstm_state=lstm_state,
            value_prefix=support_to_scalar(prefix_logits, self.reward_support_size),
            value=support_to_scalar(value_logits, self.value_support_size),
            value_prefix_logits=prefix_logits,
            value_logits=value_logits,
            policy_logits=policy_logits,
        )

    def initial_lstm_state(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> LSTMState:
        """Zero (h, c), each [1, batch_size, lstm_hidden_size], in the parameters' dtype."""
        param = self.dynamics_network.conv.weight
        device = param.device if device is None else device
        shape = (1, batch_size, self.lstm_hidden_size)
        return (
            torch.zeros(shape, dtype=param.dtype, device=device),
            torch.zeros(shape, dtype=param.dtype, device=device),
        )

    # -- consistency branch --------------------------------------------------------------------

    def project(self, state: torch.Tensor, branch: str = "online") -> torch.Tensor:
        """Projection of hidden states [B, *latent_shape] -> [B, proj_out] (or [B, pred_out]).

        `branch` is "online" (states from the dynamics) or "target" (states of the true next
        observations):
        "barlow": the projection for both branches, both with gradient (Barlow Twins is
            symmetric; the paper's point).
        "simsiam" (EfficientZero): online is projection then predictor -> [B, pred_out]; target
            is the projection, detached.
        "none": raises ValueError (no projection is built).
        """
        if branch not in ("online", "target"):
            raise ValueError(f'project: branch must be "online" or "target", got {branch!r}')
        if self.projection is None:
            raise ValueError(
                'consistency_loss="none" builds no projection; project() is unavailable'
            )
        proj = self.projection(state.flatten(1))
        if self.predictor is not None:
            return self.predictor(proj) if branch == "online" else proj.detach()
        return proj
