"""TensorBoard logging of every metric BarlowZero reports, under RLlib's own key paths as tags.

Two writers, one tag layout (``learners/default_policy/value_loss``,
``evaluation/env_runners/episode_return_mean``, ``search/visit_entropy_mean``, ...):

* ``TensorBoardCallback``: an RLlib callback for plain Python ``algo.train()`` loops (which write
  nothing in RLlib 2.60). It writes into ``algorithm.logdir`` unless given another ``logdir``,
  and stays silent when the algorithm runs as a Tune trial, where Tune's logger writes.
* ``TBXLoggerCallback``: Tune's own TensorBoard logger without its ``ray/tune/`` tag prefix; the
  ``rllib train`` command hands it to Tune (which then adds no default one).

The step of every scalar is the one Tune uses: ``timesteps_total`` if reported, else
``training_iteration``.

    from rllib_barlowzero.tensorboard import TensorBoardCallback
    config.callbacks(TensorBoardCallback)          # then: tensorboard --logdir ~/ray_results
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.tune.logger import TBXLoggerCallback as _TuneTBXLoggerCallback

__all__ = ["TBXLoggerCallback", "TensorBoardCallback", "flatten_scalars", "running_under_tune"]

# Result keys that are bookkeeping, not metrics (Tune's TensorBoard logger skips the same).
SKIPPED_KEYS = ("config", "pid", "timestamp", "time_total_s", "training_iteration")
TUNE_TAG_PREFIX = "ray/tune/"


def flatten_scalars(result: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Yields ``("a/b/c", value)`` for every finite real number in a nested result dict.

    Strings, booleans, lists, arrays with more than one element and NaN/inf are skipped.
    """
    for key, value in result.items():
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten_scalars(value, prefix=f"{tag}/")
            continue
        if hasattr(value, "item") and getattr(value, "size", 1) == 1:
            value = value.item()  # numpy / torch scalars
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        value = float(value)
        if math.isfinite(value):
            yield tag, value


def result_step(result: Mapping[str, Any]) -> int:
    """The TensorBoard step of a result: Tune's rule (timesteps_total, else training_iteration)."""
    return int(result.get("timesteps_total") or result.get("training_iteration") or 0)


def running_under_tune(algorithm: Any) -> bool:
    """True when `algorithm` is a Tune trial (Tune gives its Trainables their trial info)."""
    return getattr(algorithm, "_trial_info", None) is not None


class TensorBoardCallback(RLlibCallback):
    """Writes every scalar of each ``algo.train()`` result to TensorBoard.

    Args:
        logdir: where the event files go; default: the algorithm's ``logdir``. RLlib builds
            callbacks without arguments, so to pick a directory subclass it::

                class MyTensorBoard(TensorBoardCallback):
                    logdir = "runs/barlowzero-lr0.01"
    """

    logdir: str | None = None

    def __init__(self, logdir: str | None = None) -> None:
        super().__init__()
        if logdir is not None:
            self.logdir = logdir
        self._writer = None

    def on_train_result(self, *, algorithm: Any, result: dict, **kwargs: Any) -> None:
        if running_under_tune(algorithm):
            return  # Tune's TensorBoard logger writes this result already.
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.logdir or algorithm.logdir)
        step = result_step(result)
        skipped = {k: v for k, v in result.items() if k not in SKIPPED_KEYS}
        for tag, value in flatten_scalars(skipped):
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Closes the event file (it is flushed after every result anyway)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _PlainTags:
    """A tensorboardX writer whose ``add_*`` calls drop Tune's ``ray/tune/`` tag prefix."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._writer, name)
        if not name.startswith("add_") or name == "add_hparams":
            return attr

        def add(tag: str, *args: Any, **kwargs: Any) -> Any:
            return attr(tag.removeprefix(TUNE_TAG_PREFIX), *args, **kwargs)

        return add


class TBXLoggerCallback(_TuneTBXLoggerCallback):
    """Tune's TensorBoard logger (scalars, histograms, hparams) with plain RLlib key tags."""

    def log_trial_start(self, trial: Any) -> None:
        super().log_trial_start(trial)
        self._trial_writer[trial] = _PlainTags(self._trial_writer[trial])
