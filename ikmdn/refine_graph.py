"""The LM refinement of `ikmdn.refine` as a torch module, exported into format-2 ONNX graphs.

`RefineGraph(arm, settings)` maps targets (N, target_dim) float64, the network's weights (N, K)
and means (N, K, dof) (float32) to the format-2 outputs of DESIGN.md: refined joints, reached
positions, errors, rotation errors, within_limits and distinct. Everything after the network is
float64. The rules are those of `ikmdn.refine` (its module docstring, constants from
`RefineSettings`); the compiled kernel `ikmdn.kernels.refine_kernel` is their Python medium and
this module their graph medium: tests/test_export_format2.py pins the two together candidate by
candidate on every arm family (a change to one that the other lacks fails there).

How the rules become a graph (torch.onnx tracing, so no data-dependent Python control flow):

- every candidate is a column of component-major rows (M = N K candidates; ONNX Runtime runs
  elementwise float64 operations on contiguous rows several times faster than small batched
  products or reductions over short axes); a per-candidate branch is a selection, and a
  candidate that has stopped keeps its state (its trials are computed, never kept), so every
  iteration is the same operations for all candidates;
- selections of finite values are arithmetic (`select`: a * 1 + b * 0 is a exactly), because
  ONNX Runtime's float64 Where is 10 to 20 times slower than Mul; a trial step that is not
  finite is rejected (the kernel's NaN trial is) and replaced by q, so trial states stay finite;
- PHASES: the iterations run in phases (`default_phases`: 2, 2, 2, 2, 4, 4, 14 for 30 iterations);
  each phase is one ONNX Loop over one exported iteration (`step`) that stops once no candidate
  is active; between phases the still active candidates are gathered (nonzero / index_select ->
  NonZero / Gather) and, after the next phase, written back (index_copy -> ScatterElements), so
  the cost follows the candidates still running (most stop after 2 to 4 iterations);
- the damped step (J^T J + lam I) dq = -J^T r is an unrolled Cholesky factorisation and two
  substitutions, entry by entry (dof is small; the torch.linalg solvers do not export);
- angles: ONNX Runtime has no float64 Atan, so the angle of (x, y) with y >= 0 is the float32
  angle corrected by one float64 step (`angle_of`, within an ulp or two of atan2); Python's `%`
  is fmod (exact) plus one turn where negative (`py_mod`), as numba and numpy compute it;
- serial chains walk their fixed transforms with `SerialArm._walk`, the arm's own walk (numpy and
  torch alike), so the chain data has one reader.

Arithmetic is float64, in the kernel's order of operations throughout (sums left to right), so
graph and kernel differ only where their sin and cos differ (ONNX Runtime's vectorised float64
sin and cos differ from libm's in the last bit for most arguments): refined joints agree to
~1e-12 rad where both converge. On a redundant arm (Panda: 7 joints, 6-D poses) the damped
steps leave the self-motion to rounding, amplified by 1 / lam, so a few percent of converged
candidates end up to ~1e-5 rad apart along it, both exact solutions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import Tensor, nn

from ikmdn.arms import Arm
from ikmdn.errors import IKMDNError
from ikmdn.kernels import SMALL_SIN
from ikmdn.refine import RefineSettings
from ikmdn.solve import MERGE_TOL

TWO_PI = 2.0 * math.pi
LIMIT_ATOL = 1e-9   # Arm.within_limits' tolerance
F64 = torch.float64


def default_phases(max_iter: int) -> tuple[int, ...]:
    """Iterations per LM phase: 2, 2, 2, 2, 4, 4, 8, 8, 16, 16, ... (each size twice, then
    doubled), the last one taking what is left so they sum to max_iter. Candidates stop at a
    falling rate (most after 2 to 4 iterations, a tail of slow ones on spatial arms after tens),
    so short phases early and longer ones late keep the rows iterated close to the rows still
    active (UR5, 1,000 poses: 530k candidate-iterations where 458k are active, against 629k for
    phases of 2, 2, 4, 8, 16, 32, 36)."""
    phases: list[int] = []
    size, left = 2, max(int(max_iter), 0)
    while left > 0:
        phases.append(left if left < 2 * size else size)   # a short remainder joins the last
        left -= phases[-1]
        if len(phases) % 2 == 0 and len(phases) > 2:
            size *= 2
    return tuple(phases)


def refine_metadata(settings: RefineSettings, phases: Sequence[int]) -> dict:
    """The JSON of metadata ikmdn.refine: the RefineSettings fields plus "phases"."""
    return {**asdict(settings), "phases": [int(p) for p in phases]}


def flag(mask: Tensor) -> Tensor:
    """A bool mask as float64 1.0 / 0.0."""
    return mask.to(F64)


def select(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """where(mask, a, b) for FINITE a and b, exactly (a * 1 + b * 0 = a): ONNX Runtime's Where is
    10 to 20 times slower than Mul and Add on float64, and the refinement selects every state
    variable of every candidate in every iteration."""
    m = flag(mask)
    return a * m + b * (1.0 - m)


def py_mod(a: Tensor, b: float) -> Tensor:
    """a % b for b > 0 as Python, numba and numpy compute it: fmod (exact), plus b where negative."""
    m = torch.fmod(a, b)
    return m + b * flag(m < 0)


def wrap(a: Tensor) -> Tensor:
    """Angles wrapped into [-pi, pi) (ikmdn.arms.wrap_angle)."""
    return py_mod(a + math.pi, TWO_PI) - math.pi


def angle_of(y: Tensor, x: Tensor) -> Tensor:
    """atan2(y, x) in [0, pi] for y >= 0, float64: the float32 angle (ONNX Runtime's Atan has no
    float64 kernel) corrected by one step t + tan(theta - t); the correction is ~1e-7, so its
    cube (the next term) is far below float64 rounding."""
    t = torch.abs(torch.atan2(y.to(torch.float32), x.to(torch.float32))).to(F64)
    c, s = torch.cos(t), torch.sin(t)
    num = y * c - x * s
    den = x * c + y * s
    return t + num / den


def _rows(t: Tensor) -> list[Tensor]:
    """The columns of t (M, c) as c tensors (M,)."""
    return list(torch.unbind(t, dim=1))


def _sum(terms: Sequence[Tensor]) -> Tensor:
    """terms[0] + terms[1] + ..., left to right (the kernels' order of summation)."""
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    return acc


def _column_dots(jac: Sequence[Sequence[Tensor]], r: Sequence[Tensor]) -> list[Tensor]:
    """J^T r as dof tensors (M,), each summed over the residual rows in order."""
    return [_sum([jac[t][j] * r[t] for t in range(len(r))]) for j in range(len(jac[0]))]


def sixd_rows(v: Sequence[Tensor]) -> list[list[Tensor]]:
    """Rotation m[i][j] (each (M,)) by Gram-Schmidt from the 6-D encoding v (6 rows): as
    kernels._sixd_to_matrix (ikmdn.arms.rotations.sixd_to_matrix_t)."""
    a0, a1, a2, b0, b1, b2 = v
    n = torch.sqrt(a0 * a0 + a1 * a1 + a2 * a2)
    a0, a1, a2 = a0 / n, a1 / n, a2 / n
    p = a0 * b0 + a1 * b1 + a2 * b2
    b0, b1, b2 = b0 - p * a0, b1 - p * a1, b2 - p * a2
    n = torch.sqrt(b0 * b0 + b1 * b1 + b2 * b2)
    b0, b1, b2 = b0 / n, b1 / n, b2 / n
    return [[a0, b0, a1 * b2 - a2 * b1],
            [a1, b1, a2 * b0 - a0 * b2],
            [a2, b2, a0 * b1 - a1 * b0]]


def log_map_rows(r: list[list[Tensor]]) -> list[Tensor]:
    """The rotation vector (3 rows) of rotations r[i][j]: kernels._log_map, branches as selections."""
    r00, r01, r02 = r[0]
    r10, r11, r12 = r[1]
    r20, r21, r22 = r[2]
    v0, v1, v2 = r21 - r12, r02 - r20, r10 - r01
    cos = 0.5 * (r00 + r11 + r22 - 1.0)
    cos = torch.clamp(cos, -1.0, 1.0)
    sin = 0.5 * torch.sqrt(v0 * v0 + v1 * v1 + v2 * v2)
    angle = angle_of(sin, cos)
    small = sin < SMALL_SIN
    # each branch finite wherever it is not taken, so `select` may combine them
    factor = select(small, 0.5 + angle * angle / 12.0, angle / (2.0 * torch.clamp(sin, min=SMALL_SIN)))
    w0, w1, w2 = v0 * factor, v1 * factor, v2 * factor
    # angle > pi/2: the axis from the symmetric part (R + R^T)/2 - cos I, its largest diagonal
    s00 = 0.5 * (r00 + r00) - cos
    s11 = 0.5 * (r11 + r11) - cos
    s22 = 0.5 * (r22 + r22) - cos
    s01, s02, s12 = 0.5 * (r01 + r10), 0.5 * (r02 + r20), 0.5 * (r12 + r21)
    first = (s00 >= s11) & (s00 >= s22)
    second = ~first & (s11 >= s22)
    f1, f2 = flag(first), flag(second)
    f3 = 1.0 - f1 - f2

    def pick(x1, x2, x3):     # exactly one of f1, f2, f3 is 1
        return x1 * f1 + x2 * f2 + x3 * f3

    # n >= sqrt(1/3) where cos < 0 (the largest diagonal of (1 - cos) a a^T); elsewhere unused
    n = torch.clamp(torch.sqrt(pick(s00, s11, s22) * (1.0 - cos)), min=1e-300)
    a0, a1, a2 = pick(s00, s01, s02) / n, pick(s01, s11, s12) / n, pick(s02, s12, s22) / n
    sa = angle * (1.0 - 2.0 * flag(a0 * v0 + a1 * v1 + a2 * v2 < 0))
    wide = cos < 0
    return [select(wide, sa * a0, w0), select(wide, sa * a1, w1), select(wide, sa * a2, w2)]


Rows = list[Tensor]   # one (M,) tensor per coordinate: the component-major layout
State = tuple[Tensor, ...]   # the P rows (M,) an LM phase carries (RefineGraph's docstring)


class _Kinematics(nn.Module):
    """An arm's kinematics and residual in torch (kernels._kinematics and kernels._residual),
    component-major: joints, targets, residuals as lists of rows (M,), the Jacobian as
    jac[t][j]. ONNX Runtime runs elementwise operations on contiguous float64 rows several times
    faster than it runs small batched matrix products or reductions over short axes."""

    def __init__(self, arm: Arm):
        super().__init__()
        if not hasattr(arm, "kernel_data"):
            raise IKMDNError(f"arm {arm.name!r} ({type(arm).__name__}) gives no kernel_data(): the "
                             "refinement graph supports planar and serial arms")
        data = arm.kernel_data()
        self.arm = arm
        self.family = data["family"]
        self.dof, self.target_dim = arm.dof, arm.target_dim
        if self.family == "planar":
            self.pose = bool(data["orientation"])
            self.lengths = [float(v) for v in data["link_lengths"]]
            self.offsets = [float(v) for v in data["joint_offsets"]]
            self.residual_dim = self.target_dim
        elif self.family == "serial":
            self.pose = bool(data["pose"])
            self.weight = float(data["rotation_weight"])
            self.revolute = [bool(v) for v in data["revolute"]]
            self.residual_dim = 6 if self.pose else 3
        else:
            raise IKMDNError(f"unknown kernel family {data['family']!r} of arm {arm.name!r}; "
                             "expected 'planar' or 'serial'")
        self.rotation = self.family == "serial" and self.pose

    def forward(self, q: Rows) -> tuple[Rows, list[Rows]]:
        """(reached rows (target_dim), residual Jacobian jac[t][j] (residual_dim x dof)) at q."""
        if self.family == "planar":
            return self._planar(q)
        return self._serial(q)

    def _planar(self, q: Rows):
        """kernels._planar_kinematics: absolute link angles by a running sum, the hand as the sum
        of the links, Jacobian column j the sum over the links from j on (from the last)."""
        angle = None
        lc, ls = [], []
        for j, qj in enumerate(q):
            step = qj + self.offsets[j] if self.offsets[j] != 0.0 else qj
            angle = step if angle is None else angle + step
            lc.append(self.lengths[j] * torch.cos(angle))
            ls.append(self.lengths[j] * torch.sin(angle))
        reached = [_sum(lc), _sum(ls)] + ([wrap(angle)] if self.pose else [])
        jx, jy = [lc[0]] * self.dof, [lc[0]] * self.dof
        for j in range(self.dof - 1, -1, -1):
            if j == self.dof - 1:
                jx[j], jy[j] = -ls[j], lc[j]
            else:
                jx[j], jy[j] = jx[j + 1] - ls[j], jy[j + 1] + lc[j]
        jac = [jx, jy]
        if self.pose:
            one = torch.ones_like(lc[0])
            jac.append([one] * self.dof)
        return reached, jac

    def _serial(self, q: Rows):
        """kernels._serial_kinematics: the chain walk of SerialArm._walk (the arm's own, on (3, M)
        columns), then the geometric Jacobian, rotation rows times rotation_weight for poses."""
        qt = torch.stack(q, dim=0)

        def const(values):
            return torch.tensor(values, dtype=F64)[:, None]

        cols, pos, frames = self.arm._walk(qt, torch.cos, torch.sin, const, True)
        zero = torch.zeros_like(q[0])

        def rows(v):   # parts that no joint moves are still (3, 1) constants
            return list(torch.unbind(v + zero if v.shape[1] == 1 else v, 0))

        p = rows(pos)
        reached = p + (rows(cols[0]) + rows(cols[1]) if self.pose else [])
        jac: list[Rows] = [[zero] * self.dof for _ in range(self.residual_dim)]
        for i, (z, origin) in enumerate(frames):
            z0, z1, z2 = rows(z)
            if self.revolute[i]:
                o = rows(origin)
                d0, d1, d2 = p[0] - o[0], p[1] - o[1], p[2] - o[2]
                col = [z1 * d2 - z2 * d1, z2 * d0 - z0 * d2, z0 * d1 - z1 * d0]
                if self.pose:
                    col += [z0 * self.weight, z1 * self.weight, z2 * self.weight]
            else:
                col = [z0, z1, z2] + ([zero, zero, zero] if self.pose else [])
            for t, v in enumerate(col):
                jac[t][i] = v
        return reached, jac

    def target_rotation(self, x: Rows) -> Rows:
        """The target rotations m[i][j] (9 rows, row-major) of pose targets x; else []."""
        if not self.rotation:
            return []
        m = sixd_rows(x[3:9])
        return [m[i][j] for i in range(3) for j in range(3)]

    def residual(self, reached: Rows, x: Rows, xrot: Rows) -> Rows:
        """Residual rows (residual_dim) of reached vs targets x; xrot from target_rotation(x)."""
        if self.rotation:
            m0 = sixd_rows(reached[3:9])
            m1 = [xrot[0:3], xrot[3:6], xrot[6:9]]
            rel = [[m0[i][0] * m1[j][0] + m0[i][1] * m1[j][1] + m0[i][2] * m1[j][2]
                    for j in range(3)] for i in range(3)]
            w = log_map_rows(rel)
            return [reached[a] - x[a] for a in range(3)] + [self.weight * v for v in w]
        out = [reached[a] - x[a] for a in range(self.target_dim)]
        if self.family == "planar" and self.pose:
            out[2] = wrap(out[2])
        return out


class RefineGraph(nn.Module):
    """The LM rules of ikmdn.refine, phased, plus the format-2 outputs (module docstring).

    forward(targets (N, target_dim) f64, weights (N, K) f32, means (N, K, dof) f32) ->
    (joints (N, K, dof) f64, positions (N, K, target_dim) f64, errors (N, K) f64,
    rotation_errors (N, K) f64, within_limits (N, K) bool, distinct (N, K) bool).
    refine(q0 (M, dof), x (M, target_dim)) -> (q, reached, err): the LM alone, as ikmdn.refine.refine.

    A phase carries P + 1 tensors (M,): the state, one float64 row per number of a candidate
    (component-major: q (dof), reached (target_dim), r (residual_dim), J (residual_dim x dof,
    row-major), err, lam, target x (target_dim) and, for pose targets, the target rotation (9)),
    then `active` (bool). As separate Loop-carried values they need no Split or Concat per
    iteration, and compaction gathers and scatters 1-D rows.
    """

    def __init__(self, arm: Arm, settings: RefineSettings | None = None,
                 phases: Sequence[int] | None = None, merge_tol: float = MERGE_TOL):
        super().__init__()
        from ikmdn.refine import default_settings

        self.settings = settings or default_settings(arm)
        self.phases = tuple(int(p) for p in (phases or default_phases(self.settings.max_iter)))
        if any(p < 1 for p in self.phases) or sum(self.phases) != max(self.settings.max_iter, 0):
            raise IKMDNError(f"phases {list(self.phases)} must be positive and sum to max_iter "
                             f"{self.settings.max_iter}")
        self.kin = kin = _Kinematics(arm)
        self.merge_tol = float(merge_tol)
        self.sizes = [kin.dof, kin.target_dim, kin.residual_dim, kin.residual_dim * kin.dof, 1, 1,
                      kin.target_dim, 9 if kin.rotation else 0]
        self.block = sum(self.sizes[:5])   # q .. err: what a kept trial replaces
        limits = arm.joint_limits
        self.lo = [float(v) for v in limits[:, 0]]
        self.hi = [float(v) for v in limits[:, 1]]
        self.home = [float(v) for v in arm.home]
        self.periodic = [bool(v) for v in arm.continuous_joints]
        free = [bool(c and not m) for c, m in zip(arm.continuous_joints, arm.multi_turn_joints,
                                                   strict=True)]
        # Arm.within_limits: bounds widened by its tolerance; none for joints of exactly one
        # turn (no real limit). NaN fails every comparison, and refined joints are never
        # infinite (a projected infinity is a clipped limit or NaN), so finiteness needs no test.
        low = [-math.inf if f else v - LIMIT_ATOL for v, f in zip(self.lo, free, strict=True)]
        high = [math.inf if f else v + LIMIT_ATOL for v, f in zip(self.hi, free, strict=True)]
        for name, value in (("within_lo", low), ("within_hi", high)):
            self.register_buffer(name, torch.tensor(value, dtype=F64), persistent=False)

    # -- the rules, one candidate per column of the rows -----------------------------------------
    def project(self, q: Rows) -> Rows:
        """Joints onto the limits: kernels.project (periodic joints to the turn nearest home,
        others clipped)."""
        out = []
        for j, v in enumerate(q):
            if self.periodic[j]:
                v = self.home[j] + py_mod(v - self.home[j] + math.pi, TWO_PI) - math.pi
                # at most one of the two turns applies (lo < hi); v - 0 and v + 0 are v
                v = v - TWO_PI * flag(v > self.hi[j]) + TWO_PI * flag(v < self.lo[j])
            else:
                v = torch.clamp(v, self.lo[j], self.hi[j])
            out.append(v)
        return out

    def evaluate(self, q_new: Rows, x: Rows, xrot: Rows):
        """(q, reached, residual, Jacobian jac[t][j], error) at project(q_new), all rows."""
        q = self.project(q_new)
        reached, jac = self.kin(q)
        r = self.kin.residual(reached, x, xrot)
        err = torch.sqrt(_sum([v * v for v in r]))
        return q, reached, r, jac, err

    def freeze(self, q: Rows, jac: list[Rows], r: Rows) -> tuple[list[Rows], Rows]:
        """(jac with the columns of bounded joints at a limit whose gradient pushes out zeroed,
        the gradient J^T r of that jac). A zeroed column's gradient is 0 and the others' are
        unchanged, so the gradient is the one computed before, masked (as the kernel's
        damped_step computes it again from the frozen jac: the same numbers)."""
        g = _column_dots(jac, r)
        out = [list(row) for row in jac]
        for j in range(self.kin.dof):
            if self.periodic[j]:
                continue
            frozen = ((q[j] <= self.lo[j]) & (g[j] > 0)) | ((q[j] >= self.hi[j]) & (g[j] < 0))
            keep = 1.0 - flag(frozen)
            for t in range(len(jac)):
                out[t][j] = jac[t][j] * keep
            g[j] = g[j] * keep
        return out, g

    def damped_step(self, jac: list[Rows], g: Rows, lam: Tensor) -> Rows:
        """dq solving (J^T J + lam I) dq = -g, g = J^T r: kernels.damped_step, the Cholesky
        factor and both substitutions unrolled entry by entry (in the kernel's order)."""
        d, e = self.kin.dof, len(jac)
        low: list[list[Tensor | None]] = [[None] * d for _ in range(d)]
        for j in range(d):
            diag = _sum([jac[t][j] * jac[t][j] for t in range(e)]) + lam
            for k in range(j):
                diag = diag - low[j][k] * low[j][k]
            low[j][j] = torch.sqrt(diag)
            for i in range(j + 1, d):
                v = _sum([jac[t][i] * jac[t][j] for t in range(e)])
                for k in range(j):
                    v = v - low[i][k] * low[j][k]
                low[i][j] = v / low[j][j]
        y: Rows = []
        for i in range(d):            # L y = -J^T r
            v = -g[i]
            for k in range(i):
                v = v - low[i][k] * y[k]
            y.append(v / low[i][i])
        dq: Rows = [y[0]] * d
        for i in range(d - 1, -1, -1):  # L^T dq = y
            v = y[i]
            for k in range(i + 1, d):
                v = v - low[k][i] * dq[k]
            dq[i] = v / low[i][i]
        return dq

    def pack(self, q, reached, r, jac, err, lam, x, xrot) -> State:
        """The state (P rows (M,)) from its parts (class docstring)."""
        return (*q, *reached, *r, *(v for row in jac for v in row), err, lam, *x, *xrot)

    def unpack(self, state: State):
        rows = list(state)
        parts, at = [], 0
        for size in self.sizes:
            parts.append(rows[at:at + size])
            at += size
        q, reached, r, jac, (err,), (lam,), x, xrot = parts
        d = self.kin.dof
        return q, reached, r, [jac[t * d:(t + 1) * d] for t in range(len(r))], err, lam, x, xrot

    def iterate(self, state: State, active: Tensor) -> tuple[State, Tensor]:
        """One LM iteration for every candidate of (state (P rows (M,)), active (M,));
        candidates that are not active keep their state (their trials are computed, dropped)."""
        s = self.settings
        q, reached, r, jac, err, lam, x, xrot = self.unpack(state)
        jac, g = self.freeze(q, jac, r)
        dq = self.damped_step(jac, g, lam)
        # A trial that is not finite (J^T J + lam I not positive definite in rounding) is
        # rejected, as the kernel's NaN trial is; it then starts from q, so every trial state is
        # finite and the kept state can be chosen by exact arithmetic (`select`).
        q_try, ok = [], None
        for a, b in zip(q, dq, strict=True):
            t = a + b
            finite = t - t == 0.0
            ok = finite if ok is None else ok & finite
            q_try.append(torch.where(finite, t, a))
        q_new, reached_new, r_new, jac_new, err_new = self.evaluate(q_try, x, xrot)
        better = (active & ok) & (err_new < err)
        stalled = better & (err - err_new <= s.stall * err)
        m = flag(better)
        n = 1.0 - m

        def kept(new: Rows, old: Rows) -> Rows:   # row by row: no broadcasting, no copies
            return [a * m + b * n for a, b in zip(new, old, strict=True)]

        lam = torch.clamp(lam * (s.down * m + s.up * n), min=s.min_damping)
        err = err_new * m + err * n
        done = ~((err > s.tol) & (lam < s.max_damping)) | stalled
        state = self.pack(kept(q_new, q), kept(reached_new, reached), kept(r_new, r),
                          [kept(a, b) for a, b in zip(jac_new, jac, strict=True)], err, lam, x, xrot)
        return state, active & ~done

    def step(self, *values: Tensor) -> tuple[Tensor, ...]:
        """(any candidate still active (a bool scalar), *state, active) after one iteration of
        (*state, active): the body of an exported phase (an ONNX Loop whose condition is that
        flag; the P state rows and active are its loop-carried values)."""
        state, active = self.iterate(values[:-1], values[-1])
        return (active.any(), *state, active)

    def phase(self, iterations: int, state: State, active: Tensor) -> tuple[State, Tensor]:
        """Up to `iterations` LM iterations, stopping once no candidate is active (candidates
        that are not active keep their state, so stopping early changes nothing). Exported as one
        custom node `ikmdn.graph::LMPhase` that export.py replaces with an ONNX Loop over `step`."""
        out = _phase_function(self, iterations).apply(*state, active)
        return tuple(out[:-1]), out[-1]

    def initial_state(self, q0: Tensor, x: Tensor) -> tuple[State, Tensor]:
        """(state (P rows (M,)), active (M,)) after the first evaluation at project(q0) (rule 1)."""
        x_rows = list(torch.unbind(x, 1))
        xrot = self.kin.target_rotation(x_rows)
        q, reached, r, jac, err = self.evaluate(list(torch.unbind(q0, 1)), x_rows, xrot)
        state = self.pack(q, reached, r, jac, err, torch.full_like(err, self.settings.damping),
                          x_rows, xrot)
        return state, err > self.settings.tol

    def refine(self, q0: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(q (M, dof), reached (M, td), err (M,)) from starts q0 (M, dof) f64 towards x (M, td).

        The first phase runs on every candidate (nearly all start active); after each phase the
        candidates still active are gathered (NonZero, Gather) and, after the next phase, their
        state written back (ScatterElements)."""
        d, td = self.kin.dof, self.kin.target_dim

        def results(state):   # the rows of q, reached and err: all that leaves the refinement
            return (*state[:d + td], state[self.block - 1])

        state, active = self.initial_state(q0, x)
        full = results(state)
        rows = None
        for p, iterations in enumerate(self.phases):
            if p > 0:
                keep = torch.nonzero(active)[:, 0]
                rows = keep if rows is None else rows.index_select(0, keep)
                state = tuple(v.index_select(0, keep) for v in state)
                active = active.index_select(0, keep)
            state, active = self.phase(iterations, state, active)
            full = results(state) if rows is None else tuple(
                a.index_copy(0, rows, b) for a, b in zip(full, results(state), strict=True))
        return (torch.stack(full[:d], dim=1), torch.stack(full[d:d + td], dim=1), full[d + td])

    # -- the format-2 outputs -------------------------------------------------------------------
    def forward(self, targets: Tensor, weights: Tensor, means: Tensor):
        kin = self.kin
        dof, td = kin.dof, kin.target_dim
        k = weights.shape[1]
        x = targets.to(F64)
        flat_x = x[:, None, :].expand(-1, k, -1).reshape(-1, td)
        q, reached, err = self.refine(means.to(F64).reshape(-1, dof), flat_x)
        if kin.family == "serial" and kin.pose:
            d = reached[:, :3] - flat_x[:, :3]
            errors = torch.sqrt((d * d).sum(dim=1))
            rotation_errors = self.rotation_error(reached, flat_x)
        else:
            errors = err
            rotation_errors = torch.zeros_like(err)
        within = ((q >= self.within_lo) & (q <= self.within_hi)).all(dim=1)
        joints = q.reshape(-1, k, dof)
        return (joints, reached.reshape(-1, k, td), errors.reshape(-1, k),
                rotation_errors.reshape(-1, k), within.reshape(-1, k),
                self.distinct(joints, weights))

    def rotation_error(self, reached: Tensor, x: Tensor) -> Tensor:
        """Angle (M,) in radians between target and reached orientations (SerialArm.rotation_error)."""
        r1 = sixd_rows(_rows(x)[3:9])
        r2 = sixd_rows(_rows(reached)[3:9])
        rel = [[r1[0][i] * r2[0][j] + r1[1][i] * r2[1][j] + r1[2][i] * r2[2][j] for j in range(3)]
               for i in range(3)]
        v0, v1, v2 = rel[2][1] - rel[1][2], rel[0][2] - rel[2][0], rel[1][0] - rel[0][1]
        cos = 0.5 * (rel[0][0] + rel[1][1] + rel[2][2] - 1.0)
        return angle_of(0.5 * torch.sqrt(v0 * v0 + v1 * v1 + v2 * v2), cos)

    def distinct(self, joints: Tensor, weights: Tensor) -> Tensor:
        """(N, K) False for duplicates: solve.merge_duplicates, heaviest first (ties: lower index
        first), each candidate compared with the heavier distinct ones, unrolled over K."""
        n_k = weights.shape[1]
        w = weights
        # order[:, r]: the candidate of rank r, heaviest first, ties by lower index (a stable
        # sort; exported as ONNX TopK, whose ties go to the lower index by its definition)
        if torch.onnx.is_in_onnx_export():
            order = torch.topk(w, n_k, dim=1, largest=True, sorted=True).indices
        else:
            order = torch.sort(w, dim=1, descending=True, stable=True).indices
        rank = torch.zeros_like(order).scatter(
            1, order, torch.arange(n_k).expand_as(order))                # (N, K)
        dof = joints.shape[2]
        flat = (order + n_k * torch.arange(order.shape[0])[:, None]).reshape(-1)
        turns = py_mod(joints.reshape(-1, dof).index_select(0, flat).reshape(-1, n_k, dof), TWO_PI)
        distinct = [torch.ones_like(w[:, 0], dtype=torch.bool)]
        for j in range(1, n_k):
            dd = torch.abs(turns[:, :j] - turns[:, j:j + 1])
            diff = torch.minimum(dd, TWO_PI - dd).amax(dim=2)              # (N, j)
            match = (diff <= self.merge_tol) & torch.stack(distinct, dim=1)
            distinct.append(~match.any(dim=1))
        return torch.gather(torch.stack(distinct, dim=1), 1, rank)


PHASE_OP = "LMPhase"
PHASE_DOMAIN = "ikmdn.graph"


def _phase_function(module: RefineGraph, iterations: int) -> type[torch.autograd.Function]:
    """A phase of up to `iterations` LM iterations of module as an autograd Function: run in
    torch, a placeholder node when exported (see RefineGraph.phase); tracing takes tensor
    arguments only, so module and iterations are bound here."""

    class LMPhase(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *values: Tensor):
            if torch.jit.is_tracing():   # exported: only the outputs' types matter (symbolic)
                return tuple(v.clone() for v in values)
            state, active = values[:-1], values[-1]
            for _ in range(iterations):
                if not bool(active.any()):
                    break
                state, active = module.iterate(state, active)
            return (*state, active)

        @staticmethod
        def symbolic(g, *values):
            outs = g.op(f"{PHASE_DOMAIN}::{PHASE_OP}", *values, iterations_i=int(iterations),
                        outputs=len(values))
            for out, value in zip(outs, values, strict=True):
                out.setType(value.type())
            return outs

    return LMPhase
