"""Planar serial arms (revolute joints about z) and the presets bishop, planar2, planar3.

Link i has length L_i; its absolute angle is a_i = sum_{j<=i} (q_j + offset_j). The hand is at
(sum_i L_i cos a_i, sum_i L_i sin a_i); with `orientation=True` the target also carries the hand
angle a_last wrapped into [-pi, pi).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ikmdn.arms.base import Arm, register_kind, register_preset, spec_numbers, spec_text, wrap_angle
from ikmdn.errors import IKMDNError
from ikmdn.untrusted import short


@register_kind
class PlanarArm(Arm):
    """An n-link planar arm; target (x, y) or, with orientation, (x, y, phi)."""

    kind = "planar"

    def __init__(self, name: str, link_lengths: Any, joint_limits: Any,
                 joint_offsets: Any = None, orientation: bool = False):
        lengths = np.array(link_lengths, dtype=np.float64)
        if lengths.ndim != 1 or lengths.size == 0 or not np.all(lengths > 0):
            raise IKMDNError(f"link_lengths must be positive numbers, got {link_lengths}")
        offsets = np.zeros_like(lengths) if joint_offsets is None else np.array(
            joint_offsets, dtype=np.float64)
        if offsets.shape != lengths.shape:
            raise IKMDNError(f"joint_offsets needs {lengths.size} values, got {joint_offsets}")
        names = ("x", "y", "phi") if orientation else ("x", "y")
        super().__init__(name, joint_limits, names, tuple(n == "phi" for n in names))
        if self.dof != lengths.size:
            raise IKMDNError(f"{lengths.size} links need {lengths.size} joint limits, got {self.dof}")
        self.link_lengths = lengths
        self.joint_offsets = offsets
        self.orientation = bool(orientation)

    def kinematics_t(self, qt: np.ndarray, jacobian: bool):
        """Hand targets (target_dim, N) and Jacobian (target_dim, dof, N) for joints (dof, N).

        Jacobian column j is the hand's motion per unit q_j: joint j moves every link i >= j.
        Written as loops over the few joints, each operation a contiguous row of N.
        """
        n = qt.shape[1]
        out = np.zeros((self.target_dim, n))
        lc, ls = [], []
        angle = np.zeros(n)
        for j in range(self.dof):
            angle = angle + (qt[j] + self.joint_offsets[j])  # absolute angle of link j
            lc.append(self.link_lengths[j] * np.cos(angle))
            ls.append(self.link_lengths[j] * np.sin(angle))
            out[0] += lc[j]
            out[1] += ls[j]
        if self.orientation:
            out[2] = wrap_angle(angle)
        if not jacobian:
            return out, None
        jac = np.empty((self.target_dim, self.dof, n))
        for j in reversed(range(self.dof)):
            if j == self.dof - 1:
                jac[0, j], jac[1, j] = -ls[j], lc[j]
            else:
                np.subtract(jac[0, j + 1], ls[j], out=jac[0, j])
                np.add(jac[1, j + 1], lc[j], out=jac[1, j])
        if self.orientation:
            jac[2] = 1.0
        return out, jac

    def kernel_data(self) -> dict[str, Any]:
        """The kinematics as plain values for the compiled refinement kernel (`ikmdn.kernels`):
        {"family": "planar", "orientation": bool, "link_lengths": (dof,), "joint_offsets": (dof,)},
        float64 arrays (copies). The kernel computes what `kinematics_t` and `residual` compute."""
        return {"family": "planar", "orientation": self.orientation,
                "link_lengths": self.link_lengths.copy(), "joint_offsets": self.joint_offsets.copy()}

    def fk_torch(self, q):
        """Torch twin of fk: (N, dof) tensor -> (N, target_dim), differentiable."""
        import torch

        lengths = torch.as_tensor(self.link_lengths, dtype=q.dtype, device=q.device)
        offsets = torch.as_tensor(self.joint_offsets, dtype=q.dtype, device=q.device)
        a = torch.cumsum(q + offsets, dim=-1)
        cols = [torch.cos(a) @ lengths, torch.sin(a) @ lengths]
        if self.orientation:
            cols.append(torch.remainder(a[:, -1] + math.pi, 2 * math.pi) - math.pi)  # [-pi, pi)
        return torch.stack(cols, dim=-1)

    def _params(self) -> dict[str, Any]:
        return {
            "link_lengths": self.link_lengths.tolist(),
            "joint_offsets": self.joint_offsets.tolist(),
            "orientation": self.orientation,
        }

    @classmethod
    def from_params(cls, name: str, joint_limits: list, params: dict[str, Any]) -> PlanarArm:
        """The arm of a spec's fields; each is checked (finite numbers, right types and lengths)."""
        lengths = spec_numbers(params["link_lengths"], "link_lengths", (None,))
        offsets = params.get("joint_offsets")
        if offsets is not None:
            offsets = spec_numbers(offsets, "joint_offsets", (lengths.size,))
        orientation = params.get("orientation", False)
        if not isinstance(orientation, bool):
            raise IKMDNError(f"orientation must be true or false, got {short(orientation)}")
        return cls(spec_text(name, "name"), lengths, joint_limits, offsets, orientation)


PI = math.pi

register_preset("bishop", lambda: PlanarArm(
    # Bishop (1994), section 6: x1 = L1 cos t1 - L2 cos(t1 + t2), i.e. link 2 offset by pi.
    "bishop", link_lengths=[0.8, 0.2], joint_offsets=[0.0, PI],
    joint_limits=[[0.3, 1.2], [PI / 2, 3 * PI / 2]]))
register_preset("planar2", lambda: PlanarArm(
    "planar2", link_lengths=[1.0, 0.6], joint_limits=[[-PI, PI], [-PI, PI]]))
register_preset("planar3", lambda: PlanarArm(
    "planar3", link_lengths=[1.0, 0.7, 0.3], joint_limits=[[-PI, PI]] * 3, orientation=True))
