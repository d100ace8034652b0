"""The allocation is exact: on small problems it finds what trying every combination finds,
for a byte budget and for a loss budget, and it never exceeds the budget."""

from __future__ import annotations

import itertools
import random

import pytest

from qrecipe.engine.search.allocate import loss_curve, min_cost, min_loss


def _problem(rng: random.Random, units: int, options: int) -> tuple[list[list[int]], list[list[float]]]:
    costs, losses = [], []
    for _ in range(units):
        n = rng.randint(2, options)
        # byte counts like real formats: multiples of a common block, with distinct sizes
        c = sorted(rng.sample(range(1, 40), n))
        costs.append([64 * x + 128 * rng.randint(0, 3) for x in c])
        losses.append([rng.random() * 10 for _ in c])
    return costs, losses


def _brute(costs, losses, ok):
    best = None
    for pick in itertools.product(*(range(len(c)) for c in costs)):
        cost = sum(c[j] for c, j in zip(costs, pick))
        loss = sum(r[j] for r, j in zip(losses, pick))
        if ok(cost, loss) and (best is None or (loss, cost) < (best[0], best[1])):
            best = (loss, cost, pick)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_min_loss_matches_brute_force(seed):
    rng = random.Random(seed)
    costs, losses = _problem(rng, rng.randint(1, 5), 4)
    lo, hi = sum(map(min, costs)), sum(map(max, costs))
    capacity = rng.randint(lo - 50, hi + 50)
    sol, best = min_loss(costs, losses, capacity), _brute(costs, losses, lambda c, _: c <= capacity)
    if best is None:
        assert sol is None
        return
    assert sol.exact
    assert sol.cost <= capacity
    assert sol.loss == pytest.approx(best[0], abs=1e-9)
    assert sol.cost == sum(c[j] for c, j in zip(costs, sol.choice))


@pytest.mark.parametrize("seed", range(40))
def test_min_cost_matches_brute_force(seed):
    rng = random.Random(1000 + seed)
    costs, losses = _problem(rng, rng.randint(1, 5), 4)
    max_loss = rng.random() * 5 * len(costs)
    sol = min_cost(costs, losses, max_loss)
    cheapest = None
    for pick in itertools.product(*(range(len(c)) for c in costs)):
        cost = sum(c[j] for c, j in zip(costs, pick))
        if sum(r[j] for r, j in zip(losses, pick)) <= max_loss and (cheapest is None or cost < cheapest):
            cheapest = cost
    if cheapest is None:
        assert sol is None
        return
    assert sol.exact and sol.cost == cheapest and sol.loss <= max_loss + 1e-12


def test_a_coarse_grid_still_respects_the_budget():
    rng = random.Random(7)
    costs = [[rng.randint(1000, 10**6) for _ in range(4)] for _ in range(12)]
    losses = [[rng.random() for _ in range(4)] for _ in range(12)]
    capacity = (sum(map(min, costs)) + sum(map(max, costs))) // 2
    coarse = min_loss(costs, losses, capacity, max_states=500)
    fine = min_loss(costs, losses, capacity)
    assert not coarse.exact and coarse.step > fine.step
    assert coarse.cost <= capacity and fine.cost <= capacity
    assert fine.loss <= coarse.loss + 1e-12  # rounding costs up can only cost quality


def test_loss_curve_is_the_front_of_min_loss():
    rng = random.Random(3)
    costs, losses = _problem(rng, 4, 4)
    budgets, curve, exact = loss_curve(costs, losses)
    assert exact and all(a >= b for a, b in zip(curve, curve[1:]))  # more bytes never predict more loss
    for b, v in list(zip(budgets, curve))[:: max(1, len(curve) // 10)]:
        assert min_loss(costs, losses, int(b)).loss == pytest.approx(v)
