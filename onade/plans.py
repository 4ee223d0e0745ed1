"""Budgeted sampling plans: which hole variables each of K forward passes generates.

A plan for a hole of M variables and K passes is a list of K + 1 boundaries 0 = t_0 < t_1 < ... < t_K = M:
pass k samples the variables of ranks t_k .. t_{k+1} - 1 of a random order, given the t_k already known.
Sampling them together, each from its conditional given only the first t_k, costs bits: in expectation
(t_{k+1} - t_k) * L(t_k) for the pass, where L(t) is the model's loss profile, the expected bits of the
next variable when t hole variables are known. `step_plan` minimises the sum over passes by dynamic
programming (Hoogeboom et al. 2021, "Autoregressive Diffusion Models", section 4: OA-ARDM's
parallelised generation); `uniform_plan` is the baseline of equal chunks; `cosine_plan` is MaskGIT's
schedule (Chang et al. 2022), in which the number still hidden after a fraction r of the passes is
M cos(pi r / 2).

A profile is estimated by onade.metrics.loss_profile and ships with an export as `profile.json`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class LossProfile:
    """bits[t]: expected bits of the next hole variable when t of the hole's M = len(bits) are known."""
    bits: list[float]
    mask: str = "center"  # the hole it was measured on
    image_size: int = 0
    num_images: int = 0

    @property
    def hole_size(self) -> int:
        return len(self.bits)

    def at(self, hole_size: int) -> np.ndarray:
        """The profile for a hole of another size, by the fraction of the hole known (L(t/M) read off the
        measured curve): float64 [hole_size]."""
        bits = np.asarray(self.bits, np.float64)
        if hole_size == len(bits):
            return bits
        measured = np.arange(len(bits)) / len(bits)
        return np.interp(np.arange(hole_size) / hole_size, measured, bits)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> "LossProfile":
        try:
            raw = json.loads(text)
            profile = cls(bits=[float(b) for b in raw["bits"]], mask=str(raw.get("mask", "center")),
                          image_size=int(raw.get("image_size", 0)), num_images=int(raw.get("num_images", 0)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a loss profile (expected JSON with a list 'bits'): {e}") from None
        if not profile.bits or not all(math.isfinite(b) and b >= 0 for b in profile.bits):
            raise ValueError("a loss profile needs at least one finite, non-negative value in 'bits'")
        return profile


def _check(hole_size: int, num_passes: int) -> int:
    if hole_size < 1:
        raise ValueError(f"a plan needs a hole of at least one variable, got {hole_size}")
    if num_passes < 1:
        raise ValueError(f"a plan needs at least one forward pass, got {num_passes}")
    return min(num_passes, hole_size)  # a pass generates at least one variable


def plan_cost(bits: np.ndarray, plan: list[int]) -> float:
    """Expected bits of the whole hole under `plan`: sum over passes of (t_{k+1} - t_k) * L(t_k)."""
    t = np.asarray(plan)
    return float(np.sum((t[1:] - t[:-1]) * np.asarray(bits)[t[:-1]]))


def step_plan(profile: LossProfile | np.ndarray | list[float], num_passes: int,
              hole_size: int | None = None) -> list[int]:
    """The plan of `num_passes` passes (at most one per variable) of least expected bits under the loss
    profile, for a hole of `hole_size` variables (default: the profile's own). Exact DP over
    C_k(t') = min_{t < t'} C_{k-1}(t) + (t' - t) L(t), in O(M^2 K) vectorised time: about a second for
    M = 3072, K = 64."""
    if isinstance(profile, LossProfile):
        bits = profile.at(hole_size or profile.hole_size)
    else:
        bits = np.asarray(profile, np.float64)
        if hole_size is not None and hole_size != len(bits):
            bits = LossProfile(list(bits)).at(hole_size)
    M = len(bits)
    K = _check(M, num_passes)
    if K == M:
        return list(range(M + 1))
    # cost_t: best cost of reaching t known variables in the passes so far (inf = unreachable).
    cost_t = np.full(M + 1, np.inf)
    cost_t[0] = 0.0
    t_idx = np.arange(M + 1, dtype=np.float64)
    L_t = np.append(bits, 0.0)  # L(M) is never used as a pass's start
    came_from = np.zeros((K, M + 1), np.int32)
    for k in range(K):
        # Pass k starts at t (>= k known) and ends at t' > t; it must leave room for the K - k - 1 passes after it.
        intercept_t = cost_t - t_idx * L_t  # line t: intercept + t' * L(t)
        best = np.full(M + 1, np.inf)
        arg = np.zeros(M + 1, np.int32)
        starts = np.arange(k, M - (K - k) + 1)
        step = max(1, 2_000_000 // (M + 1))  # bound the [starts, ends] block's memory
        for s0 in range(0, len(starts), step):
            s = starts[s0:s0 + step]
            cand = intercept_t[s, None] + L_t[s, None] * t_idx[None, :]
            cand[t_idx[None, :] <= s[:, None]] = np.inf
            i = cand.argmin(0)
            v = cand[i, np.arange(M + 1)]
            better = v < best
            best[better] = v[better]
            arg[better] = s[i[better]]
        cost_t, came_from[k] = best, arg
    plan = [M]
    for k in range(K - 1, -1, -1):
        plan.append(int(came_from[k, plan[-1]]))
    plan.reverse()
    assert plan[0] == 0 and all(a < b for a, b in zip(plan, plan[1:])), plan
    return plan


def budget_table(profile: LossProfile, budgets: Sequence[int]) -> list[dict]:
    """What the profile forecasts for its own hole at each pass budget K (at most one pass per variable):
    expected bits per hole variable of K passes planned by `step_plan` and of K equal chunks."""
    bits = profile.at(profile.hole_size)
    rows = []
    for k in sorted({min(int(b), profile.hole_size) for b in budgets}):
        rows.append({"passes": k, "dp_bits": plan_cost(bits, step_plan(bits, k)) / profile.hole_size,
                     "uniform_bits": plan_cost(bits, uniform_plan(profile.hole_size, k)) / profile.hole_size})
    return rows


def _strictly_increasing(bounds: np.ndarray, hole_size: int) -> list[int]:
    """Boundaries made 0 < ... < M with at least one variable per pass, staying as close as allowed."""
    K = len(bounds) - 1
    out = [0]
    for k in range(1, K + 1):
        out.append(int(min(max(int(bounds[k]), out[-1] + 1), hole_size - (K - k))))
    return out


def uniform_plan(hole_size: int, num_passes: int) -> list[int]:
    """K passes of (nearly) equal size."""
    K = _check(hole_size, num_passes)
    return _strictly_increasing(np.round(np.arange(K + 1) * hole_size / K), hole_size)


def cosine_plan(hole_size: int, num_passes: int) -> list[int]:
    """MaskGIT's schedule: after pass k, M cos(pi/2 k/K) variables are still hidden (few early, many late)."""
    K = _check(hole_size, num_passes)
    hidden = np.floor(hole_size * np.cos(np.pi / 2 * np.arange(K + 1) / K))
    return _strictly_increasing(hole_size - hidden, hole_size)


def isotonic_decreasing(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The non-increasing sequence closest to `values` in weighted least squares (pool adjacent violators):
    knowing more of the hole cannot make the next variable harder to predict in expectation."""
    v = np.asarray(values, np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, np.float64)
    blocks: list[list[float]] = []  # [mean, weight, count]
    for x, wx in zip(v, w):
        blocks.append([x, wx, 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(n, m) for m, _, n in blocks])


__all__ = ["LossProfile", "step_plan", "uniform_plan", "cosine_plan", "plan_cost", "budget_table",
           "isotonic_decreasing"]
