"""rtk.stats: the exact paired McNemar test and the interval every printed accuracy difference carries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtk import stats


def test_mcnemar_p_is_the_exact_two_sided_binomial_tail():
    assert stats.mcnemar_p(0, 5) == pytest.approx(2 / 32)  # 5 broken, none fixed: 2 * 0.5^5
    assert stats.mcnemar_p(1, 9) == pytest.approx(2 * (1 + 10) / 1024)  # C(10, 0) + C(10, 1)
    assert stats.mcnemar_p(9, 1) == stats.mcnemar_p(1, 9)  # two-sided
    assert stats.mcnemar_p(7, 7) == 1.0 and stats.mcnemar_p(0, 0) == 1.0
    # against the tail summed in floating point, term by term, for a mid-sized case
    n, k = 75, 30
    tail = sum(math.comb(n, i) * 0.5**n for i in range(k + 1))
    assert stats.mcnemar_p(30, 45) == pytest.approx(2 * tail, rel=1e-12)
    assert 0 < stats.mcnemar_p(4000, 4300) < 0.05  # large counts: no float overflow in 2**n
    with pytest.raises(ValueError):
        stats.mcnemar_p(-1, 3)


def test_paired_counts_the_discordant_images_and_brackets_the_difference():
    reference = np.zeros(10_000, bool)
    reference[:9223] = True  # 92.23%
    model = reference.copy()
    model[:40] = False  # 40 broken
    model[-23:] = True  # 23 fixed
    evidence = stats.paired(model, reference)
    assert (evidence.images, evidence.fixed, evidence.broken) == (10_000, 23, 40)
    assert evidence.delta_pct == pytest.approx(-0.17)
    low, high = evidence.ci95_pct
    assert low < -0.17 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(63 / 1e4 - 0.0017**2) / 100 * 1e2,
                                                              rel=1e-3)
    assert evidence.p_value == pytest.approx(stats.mcnemar_p(23, 40))
    assert evidence.summary() == "-0.17 points (95% CI -0.33..-0.01; 23 fixed, 40 broken; McNemar p = 0.043)"
    assert stats.Paired(**evidence.as_dict()) == evidence  # round trip through JSON-able dicts
    assert stats.brief(evidence.as_dict()) == "+23/-40, p=0.043" and stats.brief(None) == "-"
    same = stats.paired(reference, reference)
    assert (same.fixed, same.broken, same.p_value, same.ci95_pct) == (0, 0, 1.0, (0.0, 0.0))
    with pytest.raises(ValueError):
        stats.paired(model[:10], reference)


def test_kl_divergence_of_softmax_outputs():
    reference = np.array([[2.0, 0.0], [0.0, 0.0]])
    assert stats.kl_divergence(reference, reference) == 0.0
    assert stats.kl_divergence(reference, reference + 5.0) == pytest.approx(0.0, abs=1e-12)  # softmax ignores shifts
    p = np.exp(2.0) / (np.exp(2.0) + 1)  # row 0 against a uniform prediction; row 1 is uniform in both
    expected = (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)) / 2
    assert stats.kl_divergence(reference, np.zeros((2, 2))) == pytest.approx(expected, rel=1e-12)
    assert stats.kl_divergence(np.zeros((2, 2)), reference) != pytest.approx(expected)  # not symmetric
