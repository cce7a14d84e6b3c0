"""The reanalyze queue: batches in the making, on a driver thread or on N Ray actors.

The algorithm samples windows on the driver (in a fixed order, so priorities and the buffer's rng
are used the same way every run) and submits each with its batch index; `next_batch` hands the
batches back in submission order. Up to `reanalyze_queue_size` batches are in flight.

  * `num_reanalyze_workers=0`: one thread in the driver makes the batches with the driver's
    `Reanalyzer` (the learner and reanalyze overlap; the GIL is released in torch and the search).
  * `num_reanalyze_workers=N`: N Ray actors (`ReanalyzeWorker`), each with a copy of the target
    model; batch i goes to worker i mod N. Windows travel through the object store as numpy
    arrays; a target refresh is one `ray.put`, and each job names the refresh it must use (a
    version number and the ref), so a worker loads new target weights lazily, in job order.

Batch i depends only on its windows, its batch index, the learner step and the target weights it
was submitted with, never on which worker made it: a seed gives the same run whatever N is (for
the same `reanalyze_queue_size`). A worker that dies is replaced, and its unfinished jobs are made
again by the new one (`restarts` counts them); since the driver applies update i only once it
holds batch i, no update is lost or applied twice.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError

from rllib_barlowzero.reanalyze import Reanalyzer
from rllib_barlowzero.replay_buffer import SampledWindows
from rllib_barlowzero.torch.networks import flush_denormals

Weights = dict[str, np.ndarray]


class ReanalyzeWorker:
    """A Ray actor holding a target-model copy; makes training batches from sampled windows.

    Args:
        network: the network to copy as the target model (its weights come with the jobs).
        config: the `BarlowZeroConfig`.
        seed: the run's seed (with the batch index, it seeds each batch's draws).
        num_threads: torch intra-op threads (the actor's CPUs).
    """

    def __init__(self, network: torch.nn.Module, config: Any, seed: int, num_threads: int) -> None:
        flush_denormals(config.flush_denormal)  # the network arrives built: set it here
        torch.set_num_threads(num_threads)
        use_gpu = config.num_gpus_per_reanalyze_worker > 0 and torch.cuda.is_available()
        self.reanalyzer = Reanalyzer(network, config, seed=seed,
                                     device="cuda" if use_gpu else "cpu")
        self.weights_version = -1

    def make_batch(self, windows: SampledWindows, learner_step: int, batch_index: int,
                   weights_version: int, weights_ref: list[ray.ObjectRef]
                   ) -> tuple[dict[str, np.ndarray], float]:
        """The batch for `windows` and the seconds it took. `weights_ref` is a one-item list, so
        Ray passes the ref itself and the weights are fetched only when the version changes."""
        start = time.perf_counter()
        if weights_version != self.weights_version:
            self.reanalyzer.set_weights(ray.get(weights_ref[0]))
            self.weights_version = weights_version
        batch = self.reanalyzer.make_batch(windows, learner_step, batch_index)
        return batch, time.perf_counter() - start

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


@dataclass
class _Job:
    windows: SampledWindows
    learner_step: int
    batch_index: int
    weights_version: int
    worker: int  # worker index (actors) or 0 (thread)
    pending: Future | ray.ObjectRef


class ReanalyzeQueue:
    """Batches submitted in order and returned in order (see the module docstring).

    Args:
        reanalyzer: the driver's `Reanalyzer` (the thread back end, and the network template
            the workers copy).
        config: the `BarlowZeroConfig` (`num_reanalyze_workers`, `num_cpus_per_reanalyze_worker`,
            `num_gpus_per_reanalyze_worker`, `custom_resources_per_reanalyze_worker`).
        target_weights: the first target weights (a network state dict of numpy arrays).
    """

    def __init__(self, reanalyzer: Reanalyzer, config: Any, target_weights: Weights) -> None:
        self.reanalyzer = reanalyzer
        self.config = config
        self.num_workers = int(config.num_reanalyze_workers)
        # Each worker's Ray resources (also its placement-group bundle under Tune).
        self.worker_resources = reanalyze_worker_resources(config)
        self.restarts = 0
        self._jobs: deque[_Job] = deque()
        self._version = 0
        self._weights: dict[int, Weights] = {}  # version -> weights, while a job still needs it
        self._weights_refs: dict[int, ray.ObjectRef] = {}
        self._thread_version = -1
        if self.num_workers == 0:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reanalyze")
            self._workers: list[Any] = []
        else:
            self._pool = None
            self._template = ray.put(_cpu_copy(reanalyzer.target_network))
            self._workers = [self._start_worker() for _ in range(self.num_workers)]
        self.set_target_weights(target_weights)

    def _start_worker(self) -> Any:
        cfg = self.config
        custom = {k: v for k, v in self.worker_resources.items() if k not in ("CPU", "GPU")}
        actor_class = ray.remote(ReanalyzeWorker).options(
            num_cpus=self.worker_resources.get("CPU", 0),
            num_gpus=self.worker_resources.get("GPU", 0),
            resources=custom,
            max_restarts=0,
        )
        threads = max(1, int(cfg.num_cpus_per_reanalyze_worker))
        return actor_class.remote(self._template, cfg, self.reanalyzer.seed, threads)

    @property
    def target_weights(self) -> Weights:
        """The newest target weights (what the next submitted batch is made with)."""
        return self._weights[self._version]

    def set_target_weights(self, weights: Weights) -> None:
        """Batches submitted from now on use `weights` (one `ray.put` with workers)."""
        self._version += 1
        self._weights[self._version] = weights
        if self._workers:
            self._weights_refs[self._version] = ray.put(weights)
        self._forget_unused_weights()

    def _forget_unused_weights(self) -> None:
        needed = {job.weights_version for job in self._jobs} | {self._version}
        for version in [v for v in self._weights if v not in needed]:
            del self._weights[version]
            self._weights_refs.pop(version, None)

    def __len__(self) -> int:
        return len(self._jobs)

    def submit(self, windows: SampledWindows, learner_step: int, batch_index: int) -> None:
        """Queues the batch for `windows` (batch index `batch_index`) with the newest target."""
        worker = batch_index % self.num_workers if self._workers else 0
        job = _Job(windows, learner_step, batch_index, self._version, worker, None)
        job.pending = self._launch(job)
        self._jobs.append(job)

    def _launch(self, job: _Job) -> Future | ray.ObjectRef:
        if not self._workers:
            weights = self._weights[job.weights_version]
            return self._pool.submit(self._make_on_thread, job, weights)
        return self._workers[job.worker].make_batch.remote(
            job.windows, job.learner_step, job.batch_index, job.weights_version,
            [self._weights_refs[job.weights_version]],
        )

    def _make_on_thread(self, job: _Job, weights: Weights) -> tuple[dict[str, np.ndarray], float]:
        start = time.perf_counter()
        if job.weights_version != self._thread_version:
            self.reanalyzer.set_weights(weights)
            self._thread_version = job.weights_version
        batch = self.reanalyzer.make_batch(job.windows, job.learner_step, job.batch_index)
        return batch, time.perf_counter() - start

    def next_batch(self) -> tuple[SampledWindows, dict[str, np.ndarray], float]:
        """Blocks for the oldest job: (its windows, its batch, seconds reanalyze took)."""
        job = self._jobs[0]
        while True:
            try:
                if isinstance(job.pending, Future):
                    batch, seconds = job.pending.result()
                else:
                    batch, seconds = ray.get(job.pending)
                break
            except RayActorError:
                self._replace_worker(job.worker)
        self._jobs.popleft()
        self._forget_unused_weights()
        return job.windows, batch, seconds

    def _replace_worker(self, index: int) -> None:
        """Starts a new worker in slot `index` and gives it every unfinished job of the dead one."""
        self.restarts += 1
        ray.kill(self._workers[index], no_restart=True)
        self._workers[index] = self._start_worker()
        for job in self._jobs:
            if job.worker == index:
                job.pending = self._launch(job)

    def worker_node_ids(self) -> list[str]:
        """The Ray node each worker runs on (empty for the thread back end)."""
        return ray.get([worker.node_id.remote() for worker in self._workers])

    def kill_worker(self, index: int) -> None:
        """Kills worker `index` as a crash would (for fault tests); the queue replaces it."""
        ray.kill(self._workers[index], no_restart=True)

    def clear(self) -> None:
        """Forgets the jobs in flight (their results are dropped; the thread and the workers
        still load target weights in job order, so later jobs are unaffected)."""
        self._jobs.clear()
        self._forget_unused_weights()

    def shutdown(self) -> None:
        self._jobs.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for worker in self._workers:
            ray.kill(worker, no_restart=True)
        self._workers = []


def reanalyze_worker_resources(config: Any) -> dict[str, float]:
    """One reanalyze worker's Ray resources: {"CPU": ..., "GPU": ..., custom...}, zeros left out."""
    wanted = {"CPU": config.num_cpus_per_reanalyze_worker,
              "GPU": config.num_gpus_per_reanalyze_worker,
              **config.custom_resources_per_reanalyze_worker}
    return {name: amount for name, amount in wanted.items() if amount > 0}


def _cpu_copy(network: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(network).cpu()
