"""The acting temperature: EfficientZero's schedule by default, or `fixed_temperature`."""

from __future__ import annotations

import numpy as np
import pytest

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.torch.search import sample_actions, visit_temperature


def test_schedule_steps_down_at_half_and_three_quarters_of_training():
    steps = 1000
    assert [visit_temperature(s, steps) for s in (0, 499, 500, 749, 750, 999)] == [
        1.0, 1.0, 0.5, 0.5, 0.25, 0.25
    ]


def test_a_fixed_temperature_holds_for_the_whole_run():
    assert {visit_temperature(s, 1000, 0.25) for s in (0, 400, 600, 900, 5000)} == {0.25}


def test_sampling_follows_visits_to_the_power_of_one_over_the_temperature():
    visits = np.tile(np.array([[6, 2]]), (20_000, 1))
    generators = [np.random.default_rng(i) for i in range(len(visits))]
    share = (sample_actions(visits, 0.5, generators) == 0).mean()
    # visits ** 2: 36 / (36 + 4) = 0.9, computed by hand; 20k draws give a std of 0.002.
    assert abs(share - 0.9) < 0.01


@pytest.mark.parametrize("bad", [0, -0.5, "0.25", True])
def test_a_bad_fixed_temperature_is_refused_naming_the_key(bad):
    config = BarlowZeroConfig().environment("CartPole-v1").training(fixed_temperature=bad)
    with pytest.raises(ValueError, match="fixed_temperature"):
        config.validate()


def test_none_and_a_number_are_accepted():
    for value in (None, 0.25, 1):
        BarlowZeroConfig().environment("CartPole-v1").training(fixed_temperature=value).validate()
