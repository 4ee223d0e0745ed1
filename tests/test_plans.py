"""Budgeted plans (onade.plans): the DP is optimal, every plan covers the hole once, profiles round-trip."""

import itertools
import time

import numpy as np
import pytest

from onade.plans import (LossProfile, budget_table, cosine_plan, isotonic_decreasing, plan_cost, step_plan,
                         uniform_plan)

pytestmark = pytest.mark.timeout(120)


def brute_force(bits, num_passes):
    M = len(bits)
    return min(plan_cost(bits, [0, *mids, M]) for mids in itertools.combinations(range(1, M), num_passes - 1))


def test_dp_plan_is_optimal_by_enumeration():
    rng = np.random.default_rng(0)
    for trial in range(150):
        M = int(rng.integers(1, 10))
        K = int(rng.integers(1, M + 1))
        # Monotone profiles (what loss_profile returns) and arbitrary ones: the DP does not rely on the shape.
        bits = np.sort(rng.random(M) * 8)[::-1] if trial % 2 else rng.random(M) * 8
        plan = step_plan(bits, K)
        assert len(plan) == K + 1 and plan[0] == 0 and plan[-1] == M
        assert all(a < b for a, b in zip(plan, plan[1:]))
        assert plan_cost(bits, plan) == pytest.approx(brute_force(bits, K), abs=1e-9)


@pytest.mark.parametrize("plan_fn", [uniform_plan, cosine_plan])
@pytest.mark.parametrize("M,K", [(1, 1), (7, 3), (48, 48), (48, 100), (768, 16), (3072, 64)])
def test_every_plan_reveals_each_variable_once(plan_fn, M, K):
    plan = plan_fn(M, K)
    assert len(plan) == min(M, K) + 1 and plan[0] == 0 and plan[-1] == M
    assert all(a < b for a, b in zip(plan, plan[1:]))


def test_cosine_plan_reveals_few_first_and_many_last():
    sizes = np.diff(cosine_plan(768, 8))
    assert sizes[0] < sizes[-1] and list(sizes) == sorted(sizes)


def test_dp_beats_uniform_and_is_fast_for_a_3072_hole():
    t = np.arange(3072)
    bits = 2 + 6 * np.exp(-t / 300)  # hard at first, easy once much of the hole is known
    for K in (4, 16, 64):
        start = time.perf_counter()
        plan = step_plan(bits, K)
        elapsed = time.perf_counter() - start
        assert plan_cost(bits, plan) < plan_cost(bits, uniform_plan(3072, K))
        assert elapsed < 10
    assert step_plan(bits, 5000) == list(range(3073))  # one variable per pass: nothing to plan


def test_profile_resizes_by_hole_fraction_and_round_trips():
    profile = LossProfile(bits=list(np.linspace(6, 2, 48)), image_size=8, num_images=3)
    back = LossProfile.from_json(profile.to_json())
    assert back == profile
    assert back.at(48)[0] == 6 and back.at(96)[0] == 6 and back.at(96)[-1] == pytest.approx(2, abs=0.1)
    plan = step_plan(profile, 4, hole_size=96)
    assert plan[0] == 0 and plan[-1] == 96 and len(plan) == 5
    with pytest.raises(ValueError, match="bits"):
        LossProfile.from_json('{"bits": []}')
    with pytest.raises(ValueError, match="loss profile"):
        LossProfile.from_json("not json")


def test_isotonic_regression_is_non_increasing_and_keeps_the_weighted_mean():
    rng = np.random.default_rng(1)
    v = np.linspace(5, 1, 40) + rng.normal(0, 0.8, 40)
    w = rng.integers(1, 5, 40).astype(float)
    fit = isotonic_decreasing(v, w)
    assert np.all(np.diff(fit) <= 1e-12)
    assert np.dot(fit, w) == pytest.approx(np.dot(v, w))
    assert np.array_equal(isotonic_decreasing(np.array([3.0, 2.0, 1.0])), [3.0, 2.0, 1.0])


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="forward pass"):
        uniform_plan(10, 0)
    with pytest.raises(ValueError, match="hole"):
        step_plan([], 3)


def test_budget_table_forecasts_from_the_profile():
    bits = [8.0 - 7.0 * t / 99 for t in range(100)]  # falling: more context, fewer bits
    rows = budget_table(LossProfile(bits), [1, 4, 16, 100, 500])
    assert [r["passes"] for r in rows] == [1, 4, 16, 100]  # at most one pass per variable
    assert rows[0]["dp_bits"] == rows[0]["uniform_bits"] == 8.0  # one pass: every variable knows nothing
    assert rows[-1]["dp_bits"] == pytest.approx(np.mean(bits))  # one variable per pass: the exact NLL
    for r in rows:
        assert r["dp_bits"] <= r["uniform_bits"] + 1e-9
    assert all(a["dp_bits"] > b["dp_bits"] for a, b in zip(rows, rows[1:]))
