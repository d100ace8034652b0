"""Exact allocation: a multiple-choice knapsack solved by dynamic programming over cost.

Each unit takes exactly one of its options (a candidate with its bytes and its predicted
loss); the total predicted loss is the sum of the units' losses (each measured with that
unit alone quantized). Two problems:

    min_loss(capacity)      least total loss with total bytes <= capacity
    min_cost(max_loss)      fewest bytes with total loss <= max_loss

Costs are integers (bytes). Every unit's cheapest option is paid up front; the rest of each
option's cost is counted in steps of the greatest common divisor of all those extras, so the
DP is exact on real byte counts (tests/engine/search/test_allocate.py checks it against brute
force). Only when the budget spans more than `max_states` such steps is the step made coarser,
with each extra cost rounded up: the budget still holds, the result is optimal for the rounded
costs, and `exact` says it is not proven optimal for the real ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_STATES = 1_000_000  # cost steps the DP with backtracking holds (units x states bytes of memory)


@dataclass(frozen=True)
class Solution:
    choice: tuple[int, ...]  # option index per unit
    cost: int  # real bytes of the chosen options
    loss: float
    exact: bool  # proven optimal on the real byte costs
    step: int  # bytes per DP cost step


def _grid(costs: list[list[int]], span: int, max_states: int) -> tuple[list[list[int]], int, bool, int]:
    """(extra cost of each option in steps, bytes per step, exact, base cost)."""
    base = sum(min(c) for c in costs)
    extra = [[x - min(c) for x in c] for c in costs]
    g = 0
    for row in extra:
        for x in row:
            g = math.gcd(g, x)
    step = g or 1
    exact = True
    if span // step > max_states:
        step = -(-span // max_states)
        exact = False
    return [[-(-x // step) for x in row] for row in extra], step, exact, base


def _dp(steps: list[list[int]], losses: list[list[float]], states: int, keep_choices: bool):
    """dp[k]: least loss with extra cost <= k steps; choices[i][k]: unit i's option there."""
    dp = np.zeros(states + 1)
    choices = np.zeros((len(steps), states + 1), dtype=np.uint16) if keep_choices else None
    for i, (row, loss_row) in enumerate(zip(steps, losses)):
        new = np.full(states + 1, np.inf)
        for j in sorted(range(len(row)), key=lambda j: (row[j], loss_row[j])):  # cheaper wins a tie
            k = row[j]
            if k > states:
                continue
            cand = np.full(states + 1, np.inf)
            cand[k:] = dp[: states + 1 - k] + loss_row[j]
            better = cand < new
            new[better] = cand[better]
            if choices is not None:
                choices[i][better] = j
        dp = new
    return dp, choices


def min_loss(costs: list[list[int]], losses: list[list[float]], capacity: int,
             max_states: int = MAX_STATES) -> Solution | None:
    """The least-loss choice within `capacity` bytes, or None if even the cheapest does not fit."""
    base = sum(min(c) for c in costs)
    if capacity < base:
        return None
    steps, step, exact, base = _grid(costs, capacity - base, max_states)
    states = (capacity - base) // step
    _, choices = _dp(steps, losses, states, keep_choices=True)
    pick, k = [], states
    for i in reversed(range(len(steps))):
        j = int(choices[i][k])
        pick.append(j)
        k -= steps[i][j]
    pick.reverse()
    return Solution(tuple(pick), sum(c[j] for c, j in zip(costs, pick)),
                    float(sum(loss_row[j] for loss_row, j in zip(losses, pick))), exact, step)


def loss_curve(costs: list[list[int]], losses: list[list[float]], max_states: int = 4 * MAX_STATES
               ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(bytes, least loss within those bytes) from the cheapest mix to the dearest: the
    predicted Pareto front; exact as for min_loss."""
    span = sum(max(c) for c in costs) - sum(min(c) for c in costs)
    steps, step, exact, base = _grid(costs, span, max_states)
    states = -(-span // step)
    dp, _ = _dp(steps, losses, states, keep_choices=False)
    return base + step * np.arange(states + 1), dp, exact


def min_cost(costs: list[list[int]], losses: list[list[float]], max_loss: float,
             max_states: int = MAX_STATES) -> Solution | None:
    """The fewest bytes whose least loss is within max_loss, or None if no choice is."""
    budgets, curve, exact = loss_curve(costs, losses, 4 * max_states)
    ok = np.nonzero(curve <= max_loss)[0]
    if not len(ok):
        return None
    sol = min_loss(costs, losses, int(budgets[ok[0]]), max_states)
    return Solution(sol.choice, sol.cost, sol.loss, sol.exact and exact, sol.step)
