"""Shared fixtures. Tiny configurations live in `tests/tiny.py` (importable as `tiny`)."""

from __future__ import annotations

import os

import pytest
import ray

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray sized like this machine (2 CPUs) for one test module; use it with
    `pytestmark = pytest.mark.usefixtures("ray_session")`."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
