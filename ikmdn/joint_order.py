"""Find the factor order of an autoregressive model from the arm itself (a URDF's arm included).

The best order makes every factor a few-way choice: a joint that the target and the joints
before it fix up to a handful of values (UR5's closed-form decoupling: base, wrist, wrist,
elbow, shoulder, wrist). The search measures exactly that on sampled solution sets:

1. poses: n targets x = fk(q) of joints q drawn within the limits;
2. solution sets: per pose, `seeds` random joint vectors refined by the LM rules of
   ikmdn.refine; the distinct converged ones are (most of) the pose's solutions;
3. branching of joint j after the placed joints S: per pose, the solutions are grouped by their
   values of S, and log(number of distinct values of j in a group) is averaged over groups and
   poses (0: j is fixed by S; log 2: a two-way choice);
4. greedy: the joint of least branching comes next (ties: the lower index).

A redundant arm (dof joints for a residual of fewer dimensions) has a continuum of solutions,
so its first dof - residual joints are the free parameters: for each candidate set (one joint
for a 7-joint arm with pose targets), those joints are pinned at the pose's own values, the rest
is ordered as above, and the set whose order branches least in total goes first. Everything is
seeded, so the same arm and seed find the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ikmdn.arms import Arm
from ikmdn.arms.base import wrap_angle
from ikmdn.refine import default_settings

SAME = 1e-3   # rad (or m): two solutions' joint values closer than this are the same value


@dataclass(frozen=True)
class OrderSearch:
    """Budget of the search: poses, random seeds per pose."""

    poses: int = 200
    seeds: int = 48


def _solution_sets(arm: Arm, q_true: np.ndarray, pinned: tuple[int, ...], seeds: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """Per pose fk(q_true[n]): the distinct solutions (n_sol, dof) found from random seeds, with
    the pinned joints held at q_true's values."""
    from ikmdn import kernels

    kin, (lo, hi, home, periodic) = kernels.arm_data(arm)
    args = default_settings(arm).kernel_args()
    targets = arm.fk(q_true)
    sets = []
    for q, x in zip(q_true, targets, strict=True):
        lo_n, hi_n, periodic_n = lo.copy(), hi.copy(), periodic.copy()
        lo_n[list(pinned)] = hi_n[list(pinned)] = q[list(pinned)]
        periodic_n[list(pinned)] = False
        q0 = arm.sample_joints(seeds, rng)
        q0[:, list(pinned)] = q[list(pinned)]
        q0[0] = q  # the pose's own solution is always among them
        sol, _, err = kernels.refine_kernel(kin, (lo_n, hi_n, home, periodic_n), args,
                                            np.ascontiguousarray(q0), np.repeat(x[None], seeds, 0))
        sol = sol[err <= 1e-6]
        distinct = _distinct(sol, np.arange(arm.dof))
        sets.append(sol[distinct])
    return sets


def _close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) True where rows of a (n, k) and b (m, k) agree within SAME in every column
    (angles modulo 2 pi)."""
    return (np.abs(wrap_angle(a[:, None, :] - b[None, :, :])) <= SAME).all(-1)


def _distinct(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Indices of the first row of each group of rows of values (n, dof) that agree on columns."""
    same = _close(values[:, columns], values[:, columns])
    return np.flatnonzero(~np.tril(same, -1).any(1))


def _branching(sets: list[np.ndarray], placed: list[int], candidates: list[int]) -> np.ndarray:
    """(len(candidates),) for each candidate joint, the mean over poses and groups (solutions
    agreeing on placed; each pose grouped once) of log(its number of distinct values)."""
    total = np.zeros(len(candidates))
    for sol in sets:
        groups = (_close(sol[:, placed], sol[:, placed]) if placed
                  else np.ones((len(sol), len(sol)), dtype=bool))
        members = [groups[g] for g in np.flatnonzero(~np.tril(groups, -1).any(1))]
        total += [np.mean([np.log(len(_distinct(sol[m], np.array([j])))) for m in members])
                  for j in candidates]
    return total / len(sets)


def _greedy(sets: list[np.ndarray], placed: list[int], remaining: list[int]) -> tuple[list[int], float]:
    """(order of remaining, total branching) by the greedy rule."""
    placed, remaining, cost = list(placed), list(remaining), 0.0
    while remaining:
        scores = _branching(sets, placed, remaining)
        best = int(np.argmin(scores))
        cost += scores[best]
        placed.append(remaining.pop(best))
    return placed, cost


def find_joint_order(arm: Arm, seed: int, search: OrderSearch = OrderSearch()) -> tuple[int, ...]:
    """The joint order of an autoregressive model for arm (see the module docstring)."""
    free = max(0, arm.dof - arm.residual_dim)  # fewer joints than residual rows: none is free
    rng = np.random.default_rng(seed)
    q_true = arm.sample_joints(search.poses, rng)
    best: tuple[list[int], float] | None = None
    for pinned in combinations(range(arm.dof), free):
        sets = _solution_sets(arm, q_true, pinned, search.seeds, rng)
        order, cost = _greedy(sets, list(pinned), [j for j in range(arm.dof) if j not in pinned])
        if best is None or cost < best[1] - 1e-9:
            best = (order, cost)
    assert best is not None
    return tuple(best[0])
