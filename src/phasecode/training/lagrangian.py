"""The lowest price that meets a budget: both energy budgets (a knapsack over T per site, and
the choice among training rounds) pick per site the option minimising loss + μ·cost, and look
for the smallest μ whose picks cost at most the budget."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

Choice = TypeVar("Choice")

GROWTHS = 60  # ×4 each: how far above the first guess the price may have to go
BISECTIONS = 50  # halvings of log μ


def lowest_price(
    pick: Callable[[float], tuple[Choice, float]], allowed: float, guess: float
) -> tuple[float, Choice, float, bool]:
    """(μ, the picks at μ, their cost, whether it is within ``allowed``). ``pick(μ)`` returns
    the picks and their total cost, which falls as μ grows. μ = 0 when that already fits; the
    largest μ tried (the cheapest picks) when nothing does."""
    choice, cost = pick(0.0)
    if cost <= allowed:
        return 0.0, choice, cost, True
    low, high = 0.0, guess
    choice, cost = pick(high)
    for _ in range(GROWTHS):
        if cost <= allowed:
            break
        high *= 4
        choice, cost = pick(high)
    if cost > allowed:
        return high, choice, cost, False
    for _ in range(BISECTIONS):  # on log μ
        middle = math.sqrt(max(low, high * 1e-12) * high)
        trial = pick(middle)
        if trial[1] <= allowed:
            high, (choice, cost) = middle, trial
        else:
            low = middle
    return high, choice, cost, True
