"""A task's chance level: the best constant prediction's score (hand-computed) and the noise of a predictor
that ignores its input; evaluations at chance are flagged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distilnas.distill.glue import get_task
from distilnas.proxies.chance import ChanceLevel, chance_level, task_chance, uninformative

LABELS = np.array([0] * 30 + [1] * 70)


def test_the_best_constant_prediction_is_the_majority_class() -> None:
    sst2 = chance_level(get_task("sst2"), [LABELS], ["validation"])
    assert sst2.constant == pytest.approx(70.0)
    # a shuffle puts X ~ Hypergeometric(100, 70, 70) ones on the ones: 2X - 40 matches, sd(X) = 70 * 30 /
    # (100 * sqrt(99)); accuracy's sd in points is twice that
    assert sst2.noise == pytest.approx(2 * 70 * 30 / (100 * np.sqrt(99)), rel=0.1)
    assert not sst2.informative(70.0 + sst2.noise) and sst2.informative(70.0 + 3 * sst2.noise)
    # MRPC scores the mean of accuracy and F1: always "1" gives 70 and 2 * 0.7 / 1.7
    mrpc = chance_level(get_task("mrpc"), [LABELS], ["validation"])
    assert mrpc.constant == pytest.approx((70.0 + 100 * 1.4 / 1.7) / 2)
    assert chance_level(get_task("cola"), [LABELS], ["validation"]).constant == 0.0  # MCC of a constant
    stsb = chance_level(get_task("stsb"), [np.linspace(0, 5, 100)], ["validation"])
    assert stsb.constant == 0.0 and 5 < stsb.noise < 15  # Pearson of a shuffle: about 100 / sqrt(n)
    again = chance_level(get_task("sst2"), [LABELS], ["validation"])
    assert again == sst2  # seeded


def test_chance_on_the_dev_set(glue_dir: Path) -> None:
    sst2 = task_chance("sst2", glue_dir)
    assert sst2.constant == pytest.approx(100 * 444 / 872)  # SST-2 dev: 444 positive of 872


def test_an_evaluation_is_uninformative_when_every_task_is_at_chance() -> None:
    chance = {"sst2": ChanceLevel(50.0, 1.0), "rte": ChanceLevel(52.0, 3.0)}  # thresholds 52 and 58
    found = uninformative(
        {
            "a": {"sst2": 51.0, "rte": 55.0},
            "b": {"sst2": 70.0, "rte": 53.0},
            "c": {"sst2": 60.0, "rte": 60.0},
        },
        chance,
    )
    assert found["uninformative"] == ["a"] and found["fraction"] == pytest.approx(1 / 3)
    assert found["per_task"] == pytest.approx({"sst2": 1 / 3, "rte": 2 / 3})
    assert found["chance"]["rte"]["threshold"] == 58.0
