"""BarlowZeroEnvRunner: RLlib's single-agent env runner; whole-episode sampling without length bias.

RLlib's `SingleAgentEnvRunner.sample(num_episodes=N)` steps all vector-env slots together and
keeps the first N episodes to *finish*: with several envs per runner, the long episodes still
running at that moment are dropped, so evaluation scores lean towards short games.

Here `sample(num_episodes=N)` first gives every slot s of the runner's E envs a fixed quota

    q_s = N // E + (1 if s < N % E else 0)

then plays until every slot has finished its quota and returns exactly the first q_s episodes of
each slot (N in all). Episodes a slot starts once its quota is met are played only because the
vector env steps all slots together: they are discarded, make no episode callbacks and do not
reach the metrics. The selection does not depend on how long any episode is, so there is no
length bias. Sampling by timesteps (training rollouts) is RLlib's own, unchanged.

Beyond RLlib's metrics, whole-episode sampling logs `num_episodes_truncated`: the kept episodes
that ended truncated (cut at the move cap or a time limit) rather than terminated.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.core.columns import Columns
from ray.rllib.env.env_runner import ENV_STEP_FAILURE
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ENV_TO_MODULE_CONNECTOR,
    MODULE_TO_ENV_CONNECTOR,
    RLMODULE_INFERENCE_TIMER,
    WEIGHTS_SEQ_NO,
)
from ray.rllib.utils.spaces.space_utils import unbatch

from rllib_barlowzero.streams import ENV_RUNNER_STREAM, EVALUATION_STREAM, run_seed

__all__ = ["BarlowZeroEnvRunner", "NUM_EPISODES_TRUNCATED", "episode_quotas"]

# Whole-episode sampling: how many of the returned episodes ended truncated (summed per call).
NUM_EPISODES_TRUNCATED = "num_episodes_truncated"


def episode_quotas(num_episodes: int, num_envs: int) -> list[int]:
    """`num_episodes` split as evenly as possible over `num_envs` slots, the first slots first."""
    base, extra = divmod(num_episodes, num_envs)
    return [base + (slot < extra) for slot in range(num_envs)]


class BarlowZeroEnvRunner(SingleAgentEnvRunner):
    """`SingleAgentEnvRunner` whose `sample(num_episodes=N)` plays a fixed quota per env slot.

    See the module docstring. `sample(num_timesteps=...)` is RLlib's.
    """

    @override(SingleAgentEnvRunner)
    def make_module(self) -> None:
        super().make_module()
        if self.module is not None:
            # Slot s acts with the generator (seed, runner kind, worker index, s).
            kind = EVALUATION_STREAM if self.config.in_evaluation else ENV_RUNNER_STREAM
            self.module.set_random_streams(
                (run_seed(self.config.seed), kind, self.worker_index or 0)
            )

    # Slots whose episode callbacks are skipped: those past their quota while sampling episodes.
    _muted_slots: frozenset[int] | set[int] = frozenset()

    @override(SingleAgentEnvRunner)
    def _sample(
        self,
        *,
        num_timesteps: int | None = None,
        num_episodes: int | None = None,
        explore: bool,
        random_actions: bool = False,
        force_reset: bool = False,
    ) -> list[SingleAgentEpisode]:
        if num_episodes is None:
            return super()._sample(
                num_timesteps=num_timesteps,
                explore=explore,
                random_actions=random_actions,
                force_reset=force_reset,
            )
        quotas = episode_quotas(num_episodes, self.num_envs)
        self._muted_slots = {slot for slot, quota in enumerate(quotas) if quota == 0}
        try:
            episodes = self._play_quotas(quotas, explore, random_actions)
        finally:
            self._muted_slots = frozenset()

        self._done_episodes_for_metrics.extend(episodes)
        steps = sum(episode.env_steps() for episode in episodes)
        if steps:
            self._log_env_steps(metric=self._metrics_num_env_steps_sampled, num_steps=steps)
        self._increase_sampled_metrics(steps, len(episodes))
        self.metrics.log_value(
            NUM_EPISODES_TRUNCATED, sum(e.is_truncated for e in episodes), reduce="sum"
        )
        return episodes

    @override(SingleAgentEnvRunner)
    def _make_on_episode_callback(self, which: str, idx: int, episodes: Any) -> None:
        if idx not in self._muted_slots:
            super()._make_on_episode_callback(which, idx, episodes)

    def _play_quotas(
        self, quotas: list[int], explore: bool, random_actions: bool
    ) -> list[SingleAgentEpisode]:
        """Plays until each slot s has finished `quotas[s]` episodes; returns them as they ended."""
        # Like RLlib: start from freshly (re-)seeded envs, and reset again on the next call.
        self._reset_envs_and_episodes(explore)
        self._needs_initial_reset = True
        finished = [0] * self.num_envs
        kept: list[SingleAgentEpisode] = []
        steps = 0  # env steps this call (the exploration schedule's clock, as in RLlib)
        while any(done < quota for done, quota in zip(finished, quotas, strict=True)):
            started = self._step_envs(explore, random_actions, steps)
            if started is None:
                # The env failed and was recreated: abandon the running episodes, keep the
                # finished ones, and go on from unseeded resets (seeded ones would replay the
                # episodes already kept).
                self._needs_initial_reset = False
                self._reset_envs_and_episodes(explore)
                self._needs_initial_reset = True
                continue
            steps += self.num_envs - len(started)
            for slot, episode in enumerate(self._ongoing_episodes):
                which = "on_episode_start" if slot in started else "on_episode_step"
                self._make_on_episode_callback(which, slot, self._ongoing_episodes)
                if not episode.is_done:
                    continue
                self._make_on_episode_callback("on_episode_end", slot, self._ongoing_episodes)
                if finished[slot] < quotas[slot]:
                    kept.append(episode.to_numpy() if self.episodes_to_numpy else episode)
                    finished[slot] += 1
                    if finished[slot] == quotas[slot]:
                        self._muted_slots.add(slot)  # its next episodes are not wanted
                self._new_episode(slot, self._ongoing_episodes)
        return kept

    def _step_envs(self, explore: bool, random_actions: bool, steps: int) -> set[int] | None:
        """One action for every slot, one vector-env step, recorded into the running episodes.

        Returns the slots whose episode only started now (the vector env's autoreset), or None
        when the env step failed (and the env was recreated).
        """
        if random_actions:
            to_env = {Columns.ACTIONS: self.env.action_space.sample()}
        else:
            to_module, self._cached_to_module = self._cached_to_module, None
            with self.metrics.log_time(RLMODULE_INFERENCE_TIMER):
                if explore:
                    runners = self.config.num_env_runners or 1
                    t = (self.num_env_steps_sampled_lifetime // runners + steps) * runners
                    to_env = self.module.forward_exploration(to_module, t=t)
                else:
                    to_env = self.module.forward_inference(to_module)
            to_env = self._module_to_env(
                rl_module=self.module,
                batch=to_env,
                episodes=self._ongoing_episodes,
                explore=explore,
                shared_data=self._shared_data,
                metrics=self.metrics,
                metrics_prefix_key=(MODULE_TO_ENV_CONNECTOR,),
            )
        actions = to_env.pop(Columns.ACTIONS)
        results = self._try_env_step(to_env.pop(Columns.ACTIONS_FOR_ENV, actions))
        if isinstance(results, str) and results == ENV_STEP_FAILURE:
            return None
        observations, rewards, terminateds, truncateds, infos = results
        observations, actions = unbatch(observations), unbatch(actions)

        started = set()
        for slot, episode in enumerate(self._ongoing_episodes):
            if not episode.is_reset:  # the slot's previous episode ended: this is its reset
                episode.add_env_reset(observation=observations[slot], infos=infos[slot])
                started.add(slot)
                continue
            episode.add_env_step(
                observation=observations[slot],
                action=actions[slot],
                reward=rewards[slot],
                infos=infos[slot],
                terminated=terminateds[slot],
                truncated=truncateds[slot],
                extra_model_outputs={
                    **{key: value[slot] for key, value in to_env.items()},
                    WEIGHTS_SEQ_NO: self._weights_seq_no,
                },
            )
        if self.module is not None:
            # The next step's module input (frame stacking etc.), as RLlib's loop caches it.
            self._cached_to_module = self._env_to_module(
                episodes=self._ongoing_episodes,
                batch={},
                explore=explore,
                rl_module=self.module,
                shared_data=self._shared_data,
                metrics=self.metrics,
                metrics_prefix_key=(ENV_TO_MODULE_CONNECTOR,),
                **{
                    Columns.OBS: observations,
                    Columns.ACTIONS: actions,
                    Columns.REWARDS: rewards,
                    Columns.INFOS: infos,
                    Columns.TERMINATEDS: terminateds,
                    Columns.TRUNCATEDS: truncateds,
                },
            )
        return started
