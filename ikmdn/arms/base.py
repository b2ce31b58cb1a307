"""The Arm interface, spec round trip and the arm registry.

Conventions: joints q are (N, dof) float64 radians; targets x are (N, target_dim) float64 in the
arm's own length unit (and radians for angular target coordinates).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ikmdn.errors import IKMDNError
from ikmdn.untrusted import short

TWO_PI = 2.0 * math.pi


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles (any shape) wrapped into [-pi, pi)."""
    return (np.asarray(a) + math.pi) % TWO_PI - math.pi


def as_batch(values: Any, width: int, what: str) -> np.ndarray:
    """Validate and promote values to a finite float64 (N, width) array; (width,) becomes (1, width)."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise IKMDNError(f"{what} must be numbers, got {type(values).__name__}: {exc}") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != width:
        raise IKMDNError(f"{what} must have shape (N, {width}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise IKMDNError(f"{what} must be finite, got NaN or infinite values")
    return arr


class Arm(abc.ABC):
    """A serial arm: forward kinematics, analytic Jacobian, joint limits and a JSON spec.

    Subclasses set `kind`, implement `fk`, `fk_torch`, `jacobian`, `_params` and `from_params`,
    and declare which target coordinates are angles (`angular_targets`).
    """

    kind: ClassVar[str]
    # The frames the targets live in, in the names robot descriptions use (None: not stated).
    base_frame: str | None = None
    tip_frame: str | None = None

    def __init__(self, name: str, joint_limits: Any, target_names: tuple[str, ...],
                 angular_targets: tuple[bool, ...]):
        limits = np.array(joint_limits, dtype=np.float64)
        if (limits.ndim != 2 or limits.shape[1] != 2 or not np.all(np.isfinite(limits))
                or not np.all(limits[:, 0] < limits[:, 1])):
            raise IKMDNError(f"joint_limits must be [[lo, hi], ...] finite numbers with lo < hi, got "
                             f"{short(joint_limits)}")
        if len(target_names) != len(angular_targets):
            raise IKMDNError("target_names and angular_targets must have the same length")
        self.name = name
        self._limits = limits
        self.target_names = tuple(target_names)
        self.angular_targets = np.array(angular_targets, dtype=bool)

    @property
    def joint_names(self) -> tuple[str, ...]:
        """Names of the joints, base to tip (generic q1..qn unless the arm states them)."""
        return getattr(self, "_joint_names", None) or tuple(f"q{i + 1}" for i in range(self.dof))

    @joint_names.setter
    def joint_names(self, names) -> None:
        self._joint_names = tuple(names)

    def frames(self) -> str:
        """'base_frame -> tip_frame' as the arm states them (e.g. 'panda_link0 -> panda_link8')."""
        return f"{self.base_frame or 'base'} -> {self.tip_frame or 'hand'}"

    # -- sizes and limits ------------------------------------------------------------------
    @property
    def dof(self) -> int:
        """Number of joints."""
        return self._limits.shape[0]

    @property
    def target_dim(self) -> int:
        """Number of target coordinates."""
        return len(self.target_names)

    @property
    def residual_dim(self) -> int:
        """Length of the error vector that refinement drives to zero (target_dim for plain targets;
        6 for a pose: position difference and rotation log-map)."""
        return self.target_dim

    @property
    def joint_limits(self) -> np.ndarray:
        """Joint limits (dof, 2) [lo, hi] in radians (a copy)."""
        return self._limits.copy()

    @property
    def continuous_joints(self) -> np.ndarray:
        """(dof,) bool: joints whose range spans a full turn or more (UR's +-2 pi, URDF continuous
        joints): their angles are periodic, learned and compared modulo 2 pi."""
        return (self._limits[:, 1] - self._limits[:, 0]) >= TWO_PI - 1e-9

    _free: np.ndarray | None = None   # per joint: no hard stops (None: every full-turn joint)

    @property
    def free_turning(self) -> np.ndarray:
        """(dof,) bool: joints without hard stops (URDF continuous joints); by default every joint
        whose range spans a full turn (the planar presets and the UR5 preset, whose real joints
        turn +-2 pi)."""
        return self.continuous_joints.copy() if self._free is None else self._free.copy()

    @free_turning.setter
    def free_turning(self, flags) -> None:
        flags = np.array(flags, dtype=bool)
        if flags.shape != (self.dof,):
            raise IKMDNError(f"continuous needs one true/false per joint ({self.dof}), got {flags.shape}")
        self._free = flags

    @property
    def wrapping_joints(self) -> np.ndarray:
        """(dof,) bool: joints whose angle may pass from +pi to -pi without travelling the turn
        back: free-turning joints and joints of more than one turn. A revolute joint limited to
        exactly one turn (a URDF revolute joint of -pi..pi) has stops there: it does not wrap, so
        joint distances and path jumps measure the way it must really travel."""
        return (self.free_turning & self.continuous_joints) | self.multi_turn_joints

    @property
    def multi_turn_joints(self) -> np.ndarray:
        """(dof,) bool: joints whose range exceeds one turn, so one angle has several in-limit turns."""
        return (self._limits[:, 1] - self._limits[:, 0]) > TWO_PI + 1e-9

    @property
    def home(self) -> np.ndarray:
        """(dof,) the middle of each joint's range: the default reference for choosing turns."""
        return self._limits.mean(axis=1)

    def sample_joints(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Joints (n, dof) drawn uniformly within the limits."""
        lo, hi = self._limits[:, 0], self._limits[:, 1]
        return lo + (hi - lo) * rng.random((n, self.dof))

    def within_limits(self, q: np.ndarray, atol: float = 1e-9) -> np.ndarray:
        """(N,) bool: every joint of q (N, dof) lies within its limits. A free-turning joint of one
        turn of range (a URDF continuous joint) has no real limit; every other joint, multi-turn
        ones (UR's +-2 pi) included, must lie within its limits."""
        q = np.asarray(q, dtype=np.float64)
        ok = (q >= self._limits[:, 0] - atol) & (q <= self._limits[:, 1] + atol)
        free = self.wrapping_joints & ~self.multi_turn_joints
        return np.all((ok | free) & np.isfinite(q), axis=-1)

    def wrap_joints(self, q: np.ndarray, axis: int = -1, reference=None) -> np.ndarray:
        """Joints with each periodic joint moved by whole turns to the in-limit value nearest the
        reference (default `home`, the middle of the range: for +-pi and +-2 pi joints the value
        in [-pi, pi)); other joints as given.

        q is (..., dof), or (dof, ...) with axis=0 (the component-major layout of refinement);
        reference is (dof,) or shaped like q.
        """
        out = np.array(q, dtype=np.float64)
        cont = np.flatnonzero(self.continuous_joints)
        if cont.size:
            pick = (cont,) if axis == 0 else (..., cont)
            lo = self._per_joint(self._limits[cont, 0], axis, out.ndim)
            hi = self._per_joint(self._limits[cont, 1], axis, out.ndim)
            if reference is None:
                ref = self._per_joint(self.home[cont], axis, out.ndim)
            else:
                ref = np.asarray(reference, dtype=np.float64)
                ref = (self._per_joint(ref[cont], axis, out.ndim) if ref.ndim == 1 else ref[pick])
                ref = np.clip(ref, lo, hi)   # a reference beyond a limit: the turn nearest it in range
            v = ref + (out[pick] - ref + math.pi) % TWO_PI - math.pi   # nearest turn to ref
            v = np.where(v > hi, v - TWO_PI, np.where(v < lo, v + TWO_PI, v))  # back into limits
            out[pick] = v
        return out

    def joint_turns(self, q) -> np.ndarray:
        """Every in-limit turn of joints q (dof,): (T, dof), each joint of a full turn of range or
        more taking each of its in-limit values q_j + 2 pi k (all combinations; a one-turn joint
        at exactly one of its limits has two, the other limit being the same angle)."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (self.dof,) or not np.all(np.isfinite(q)):
            raise IKMDNError(f"joints must be {self.dof} finite numbers, got shape {q.shape}")
        options = []
        for j, value in enumerate(q):
            if not self.continuous_joints[j]:
                options.append([value])
                continue
            lo, hi = self._limits[j]
            first = value + TWO_PI * math.ceil((lo - 1e-12 - value) / TWO_PI)
            options.append(list(np.arange(first, hi + 1e-12, TWO_PI)) or [value])
        grids = np.meshgrid(*options, indexing="ij")
        return np.stack([g.ravel() for g in grids], axis=1)

    def project_to_limits(self, q: np.ndarray, axis: int = -1) -> np.ndarray:
        """Joints: periodic joints on the turn nearest `home` (see wrap_joints), others clipped."""
        out = self.wrap_joints(q, axis)
        bounded = np.flatnonzero(~self.continuous_joints)
        if bounded.size:
            lo = self._per_joint(self._limits[bounded, 0], axis, out.ndim)
            hi = self._per_joint(self._limits[bounded, 1], axis, out.ndim)
            pick = (bounded,) if axis == 0 else (..., bounded)
            out[pick] = np.clip(out[pick], lo, hi)
        return out

    @staticmethod
    def _per_joint(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
        """Per-joint values shaped to broadcast against an ndim array whose joint axis is 0 or -1."""
        return values if axis == -1 else values.reshape((-1,) + (1,) * (ndim - 1))

    # -- kinematics ------------------------------------------------------------------------
    # Subclasses implement one kinematic core in the component-major layout (joints (dof, N),
    # targets (target_dim, N), Jacobian (target_dim, dof, N)): every numpy operation then runs
    # over contiguous rows of length N, several times faster for small dof than (N, dof, ...).
    @abc.abstractmethod
    def kinematics_t(self, qt: np.ndarray, jacobian: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(targets (target_dim, N), Jacobian (residual_dim, dof, N) or None) for joints (dof, N).

        The Jacobian is that of `residual` with respect to q (for plain targets, d fk / d q)."""

    @abc.abstractmethod
    def fk_torch(self, q):
        """Targets (N, target_dim) as a differentiable torch tensor from joints q (N, dof)."""

    def fk(self, q) -> np.ndarray:
        """Targets (N, target_dim) float64 reached by joints q (N, dof); (dof,) is promoted."""
        return self.kinematics_t(as_batch(q, self.dof, "joints").T, False)[0].T

    def jacobian(self, q) -> np.ndarray:
        """Analytic Jacobian (N, residual_dim, dof) float64 at joints q (N, dof): d fk / d q for
        plain targets, the geometric Jacobian (translation rows first) for poses."""
        return self.kinematics_t(as_batch(q, self.dof, "joints").T, True)[1].transpose(2, 0, 1)

    def residual(self, reached: np.ndarray, targets: np.ndarray, axis: int = -1) -> np.ndarray:
        """Error vector (..., residual_dim) of reached vs targets (both (..., target_dim)); here
        reached - targets with angular coordinates wrapped into [-pi, pi). With axis=0 the layout
        is (target_dim, ...) -> (residual_dim, ...). Pose arms override it."""
        diff = np.asarray(reached, dtype=np.float64) - targets
        if self.angular_targets.any():
            angular = self.angular_targets if axis == -1 else self.angular_targets[:, None]
            diff = np.where(angular, wrap_angle(diff), diff)
        return diff

    def target_error(self, reached: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The "error" of DESIGN.md (...,): Euclidean distance ||reached - targets|| (angles
        compared modulo 2 pi); for pose targets the hand position distance."""
        return np.linalg.norm(self.residual(reached, targets), axis=-1)

    @property
    def pose_targets(self) -> bool:
        """True when targets carry a 3-D hand orientation (see rotation_error)."""
        return False

    def rotation_error(self, reached: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Angle (...,) in radians between reached and target hand orientations (0 without any)."""
        return np.zeros(np.shape(reached)[:-1])

    # -- spec round trip -------------------------------------------------------------------
    @abc.abstractmethod
    def _params(self) -> dict[str, Any]:
        """The kind's own JSON-able parameters."""

    @classmethod
    @abc.abstractmethod
    def from_params(cls, name: str, joint_limits: list, params: dict[str, Any]) -> Arm:
        """Rebuild an arm from spec fields (inverse of `spec`)."""

    def spec(self) -> dict[str, Any]:
        """JSON-able dict: name, kind, dof, target_dim, joint_limits, plus the kind's parameters."""
        return {
            "name": self.name,
            "kind": self.kind,
            "dof": self.dof,
            "target_dim": self.target_dim,
            "joint_limits": self._limits.tolist(),
            **self._params(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dof={self.dof}, target_dim={self.target_dim})"


_KINDS: dict[str, type[Arm]] = {}
_PRESETS: dict[str, Callable[[], Arm]] = {}


def register_kind(cls: type[Arm]) -> type[Arm]:
    """Class decorator: make an Arm subclass rebuildable from its spec's "kind"."""
    _KINDS[cls.kind] = cls
    return cls


def register_preset(name: str, factory: Callable[[], Arm]) -> None:
    """Make get_arm(name) build an arm with factory(); a preset name is never replaced."""
    if name in _PRESETS:
        raise IKMDNError(f"a preset arm called {name!r} exists already; give yours another name")
    _PRESETS[name] = factory


def list_arms() -> list[str]:
    """Names of the preset arms, sorted."""
    return sorted(_PRESETS)


def get_arm(name: str) -> Arm:
    """The preset arm called name; an unknown name raises an error listing the valid ones."""
    if name not in _PRESETS:
        raise IKMDNError(f"unknown arm {name!r}; choose one of: {', '.join(list_arms())}")
    return _PRESETS[name]()


_SPEC_KEYS = ("name", "kind", "dof", "target_dim", "joint_limits")


def _is_number(value: Any) -> bool:
    numeric = isinstance(value, (int, float, np.integer, np.floating))
    return numeric and not isinstance(value, (bool, np.bool_))


def spec_numbers(value: Any, key: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """A spec field (JSON numbers in nested lists) as a finite float64 array of that shape (None:
    any size on that axis). Strings, booleans, nulls, ragged lists, NaN and infinities raise an
    IKMDNError naming key."""
    dims = ", ".join("n" if s is None else str(s) for s in shape)
    wrong = f"{key} must be finite numbers of shape ({dims}{',' if len(shape) == 1 else ''}), got "
    if isinstance(value, np.ndarray):
        ok = value.dtype.kind in "iuf"
    else:
        ok, stack = True, [value]
        while stack and ok:
            item = stack.pop()
            if isinstance(item, (list, tuple)):
                stack.extend(item)
            elif isinstance(item, np.ndarray):
                ok = item.dtype.kind in "iuf"
            else:
                ok = _is_number(item)
    if not ok:
        raise IKMDNError(wrong + short(value))
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # ragged lists, integers beyond float64
        raise IKMDNError(wrong + short(value)) from None
    if arr.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, arr.shape, strict=True)):
        raise IKMDNError(wrong + f"shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise IKMDNError(wrong + short(value))
    return arr


def spec_number(value: Any, key: str) -> float:
    """A finite number from a spec field; IKMDNError naming key otherwise."""
    if not _is_number(value) or not math.isfinite(value):
        raise IKMDNError(f"{key} must be a finite number, got {short(value)}")
    return float(value)


def spec_text(value: Any, key: str, optional: bool = False) -> str | None:
    """A string from a spec field (None allowed when optional); IKMDNError naming key otherwise."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise IKMDNError(f"{key} must be a string{' or null' if optional else ''}, got {short(value)}")
    return value


def arm_from_spec(spec: dict[str, Any]) -> Arm:
    """Rebuild the arm described by spec (from Arm.spec); its fk is identical to the original's.

    spec may come from an untrusted file: every field is checked (types, shapes, finite numbers)
    and a bad one raises a one-line IKMDNError naming it.
    """
    if not isinstance(spec, dict):
        raise IKMDNError(f"arm spec must be a JSON object, got {type(spec).__name__}")
    missing = [k for k in _SPEC_KEYS if k not in spec]
    if missing:
        raise IKMDNError(f"arm spec lacks {', '.join(missing)}")
    kind = spec["kind"]
    if not isinstance(kind, str) or kind not in _KINDS:
        raise IKMDNError(f"unknown arm kind {short(kind)}; known kinds: {', '.join(sorted(_KINDS))}")
    spec_text(spec["name"], "arm spec name")
    for key in ("dof", "target_dim"):
        value = spec[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise IKMDNError(f"arm spec {key} must be a positive integer, got {short(value)}")
    params = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
    try:
        limits = spec_numbers(spec["joint_limits"], "joint_limits", (None, 2))
        arm = _KINDS[kind].from_params(spec["name"], limits.tolist(), params)
    except IKMDNError as exc:
        raise IKMDNError(f"invalid {kind} arm spec: {exc}") from None
    except KeyError as exc:
        raise IKMDNError(f"invalid {kind} arm spec: it lacks {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise IKMDNError(f"invalid {kind} arm spec: {short(exc, 120)}") from None
    if arm.dof != spec["dof"] or arm.target_dim != spec["target_dim"]:
        raise IKMDNError(
            f"arm spec says dof={spec['dof']}, target_dim={spec['target_dim']} but its parameters "
            f"give dof={arm.dof}, target_dim={arm.target_dim}"
        )
    return arm
