"""The BarlowZero learner: EfficientZero's unroll loss with a Barlow Twins consistency term."""

from __future__ import annotations

import math
from typing import Any

import torch
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.typing import ModuleID, TensorType

from rllib_barlowzero.columns import BarlowZeroColumns
from rllib_barlowzero.torch.losses import (
    barlow_twins_loss,
    categorical_cross_entropy,
    scalar_to_support,
    simsiam_loss,
    support_to_scalar,
)


def learning_rate(config: Any, step: int) -> float:
    """The learning rate at gradient step `step`: a linear warm-up, then `config.lr_schedule`.

    Every schedule starts with EfficientZero's linear warm-up, lr * (step + 1) / lr_warmup_steps
    for step < `lr_warmup_steps` (0 turns it off); afterwards:
      cosine: the paper's CosineAnnealingLR over `training_steps` (to 0), as a function of `step`
          (so the warm-up takes the first steps of the same curve, it does not shift it);
      step: EfficientZero's x0.1 after 5/6 of training;
      constant: `lr` throughout.
    """
    base = float(config.lr)
    if config.lr_schedule == "cosine":
        progress = min(step, config.training_steps) / config.training_steps
        scheduled = base * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif config.lr_schedule == "step":
        scheduled = base * (0.1 if step >= config.training_steps * 5 // 6 else 1.0)
    elif config.lr_schedule == "constant":
        scheduled = base
    else:
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}")
    if step < config.lr_warmup_steps:
        return scheduled * (step + 1) / config.lr_warmup_steps
    return scheduled


class BarlowZeroTorchLearner(TorchLearner):
    """Loss over the unroll k = 0..K (docs/design.md section 4), weighted by PER importance weights.

    Per sample: reward_coeff * value-prefix CE (k = 1..K) + value_coeff * value CE (k = 0..K) +
    policy_coeff * policy CE (k = 0..K) [+ consistency_coeff * SimSiam (k = 1..K)]. Barlow Twins
    is a batch statistic: one loss per unroll step over the rows that exist, added unweighted.
    As in EfficientZero, the gradient of the total loss is scaled by 1 / K.
    """

    def configure_optimizers_for_module(self, module_id: ModuleID, config: Any = None) -> None:
        module = self._module[module_id]
        params = self.get_parameters(module)
        if config.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params)

    def _gradient_steps(self, module_id: ModuleID) -> torch.Tensor:
        return self.module[module_id].unwrapped().gradient_steps

    def apply_gradients(self, gradients_dict: dict) -> None:
        # The schedule is a closed form of the gradient-step counter, which lives in the module's
        # state and so survives checkpoint restore (torch schedulers would not).
        for module_id in self.module.keys():
            config = self.config.get_config_for_module(module_id)
            lr = learning_rate(config, int(self._gradient_steps(module_id)))
            for optimizer in self.get_optimizers_for_module(module_id):
                for group in optimizer[1].param_groups:
                    group["lr"] = lr
            self.metrics.log_value((module_id, "lr"), lr, window=1)
        super().apply_gradients(gradients_dict)

    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        for module_id in self.module.keys():
            self._gradient_steps(module_id).add_(1)
            self.metrics.log_value(
                (module_id, "gradient_steps"), int(self._gradient_steps(module_id)), window=1
            )

    def compute_loss_for_module(
        self,
        *,
        module_id: ModuleID,
        config: Any,
        batch: dict[str, Any],
        fwd_out: dict[str, TensorType],
    ) -> TensorType:
        support = config.support_size
        num_unroll = fwd_out[BarlowZeroColumns.VALUE_PREFIX_LOGITS].shape[1]
        value_mask = batch[BarlowZeroColumns.VALUE_MASK].float()
        policy_mask = batch[BarlowZeroColumns.POLICY_MASK].float()

        value_ce = categorical_cross_entropy(
            fwd_out[BarlowZeroColumns.VALUE_LOGITS],
            scalar_to_support(batch[BarlowZeroColumns.TARGET_VALUE], support),
        )  # [B, K+1]
        # The value prefix predicted at k = 1..K sums rewards up to step t+k-1.
        prefix_ce = categorical_cross_entropy(
            fwd_out[BarlowZeroColumns.VALUE_PREFIX_LOGITS],
            scalar_to_support(batch[BarlowZeroColumns.TARGET_VALUE_PREFIX][:, 1:], support),
        )  # [B, K]
        policy_ce = categorical_cross_entropy(
            fwd_out[BarlowZeroColumns.POLICY_LOGITS], batch[BarlowZeroColumns.TARGET_POLICY]
        )
        value_loss = (value_ce * value_mask).sum(1)
        prefix_loss = (prefix_ce * value_mask[:, :-1]).sum(1)
        policy_loss = (policy_ce * policy_mask).sum(1)
        per_sample = (
            config.reward_loss_coeff * prefix_loss
            + config.value_loss_coeff * value_loss
            + config.policy_loss_coeff * policy_loss
        )
        consistency = torch.zeros((), device=per_sample.device)
        if config.consistency_loss != "none":
            mask = batch[BarlowZeroColumns.CONSISTENCY_MASK].bool()
            online = fwd_out[BarlowZeroColumns.ONLINE_PROJECTION]
            target = fwd_out[BarlowZeroColumns.TARGET_PROJECTION]
            if config.consistency_loss == "simsiam":
                per_step = torch.stack(
                    [simsiam_loss(online[:, k], target[:, k]) for k in range(num_unroll)], dim=1
                )
                simsiam_per_sample = (per_step * mask.float()).sum(1)
                consistency = simsiam_per_sample.mean()
                per_sample = per_sample + config.consistency_loss_coeff * simsiam_per_sample
            else:
                for k in range(num_unroll):
                    rows = mask[:, k]
                    if int(rows.sum()) >= 2:
                        consistency = consistency + barlow_twins_loss(
                            online[rows, k], target[rows, k], lambd=config.barlow_lambda
                        )
        weights = batch[BarlowZeroColumns.WEIGHTS].float()
        total = (weights * per_sample).mean()
        if config.consistency_loss == "barlow":
            total = total + config.consistency_loss_coeff * consistency
        if total.requires_grad:
            total.register_hook(lambda grad: grad / num_unroll)

        with torch.no_grad():
            predicted_value = support_to_scalar(
                fwd_out[BarlowZeroColumns.VALUE_LOGITS][:, 0], support
            )
            priorities = (predicted_value - batch[BarlowZeroColumns.TARGET_VALUE][:, 0]).abs()
            entropy = -(
                torch.softmax(fwd_out[BarlowZeroColumns.POLICY_LOGITS][:, 0], -1)
                * torch.log_softmax(fwd_out[BarlowZeroColumns.POLICY_LOGITS][:, 0], -1)
            ).sum(-1)
        log = {
            "total_loss": total,
            "value_prefix_loss": prefix_loss.mean(),
            "value_loss": value_loss.mean(),
            "policy_loss": policy_loss.mean(),
            "consistency_loss": consistency,
            "predicted_value_mean": predicted_value.mean(),
            "target_value_mean": batch[BarlowZeroColumns.TARGET_VALUE][:, 0].mean(),
            "policy_entropy": entropy.mean(),
        }
        # One device-to-host copy for all scalars (not one sync per metric).
        values = torch.stack([v.detach().float().reshape(()) for v in log.values()]).cpu().tolist()
        for key, value in zip(log, values, strict=True):
            self.metrics.log_value((module_id, key), value, window=1)
        self.metrics.log_value(
            (module_id, BarlowZeroColumns.NEW_PRIORITIES), priorities, reduce="item_series"
        )
        return total
