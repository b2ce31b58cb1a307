// A planar serial arm from the ikmdn.arm spec of a model (kind "planar"), as ikmdn/arms/planar.py
// defines it: link i has length L_i and absolute angle a_i = sum_{j<=i} (q_j + offset_j); the hand
// is at (sum_i L_i cos a_i, sum_i L_i sin a_i); with "orientation" the target also carries the
// hand angle a_last wrapped into [-pi, pi). Used for drawing only: the solving happens in the model.

const TWO_PI = 2 * Math.PI;

/** Angle wrapped into [-pi, pi) (numpy's (a + pi) % 2pi - pi). */
export function wrapAngle(a) {
  const m = (a + Math.PI) % TWO_PI;
  return (m < 0 ? m + TWO_PI : m) - Math.PI;
}

function numbers(value, what, length) {
  if (!Array.isArray(value) || (length !== undefined && value.length !== length)
      || !value.every((v) => typeof v === "number" && Number.isFinite(v))) {
    throw new Error(`arm spec: ${what} must be ${length ?? "some"} finite numbers, got ${JSON.stringify(value)}`);
  }
  return value;
}

export class PlanarArm {
  constructor(spec) {
    if (!spec || spec.kind !== "planar") {
      throw new Error(`this page draws planar arms; the model's arm is of kind ${JSON.stringify(spec && spec.kind)}`);
    }
    this.name = String(spec.name);
    this.lengths = numbers(spec.link_lengths, "link_lengths");
    this.dof = this.lengths.length;
    this.offsets = spec.joint_offsets == null ? this.lengths.map(() => 0)
      : numbers(spec.joint_offsets, "joint_offsets", this.dof);
    if (!Array.isArray(spec.joint_limits) || spec.joint_limits.length !== this.dof) {
      throw new Error(`arm spec: joint_limits needs ${this.dof} [lo, hi] pairs`);
    }
    this.limits = spec.joint_limits.map((pair, j) => numbers(pair, `joint_limits[${j}]`, 2));
    this.orientation = Boolean(spec.orientation);
    this.targetDim = this.orientation ? 3 : 2;
    this.reach = this.lengths.reduce((a, b) => a + b, 0);
    // Periodic joints: a full turn of range or more (Arm.continuous_joints); free: exactly one turn.
    this.periodic = this.limits.map(([lo, hi]) => hi - lo >= TWO_PI - 1e-9);
    this.free = this.limits.map(([lo, hi], j) => this.periodic[j] && !(hi - lo > TWO_PI + 1e-9));
    this.home = this.limits.map(([lo, hi]) => (lo + hi) / 2);
  }

  /** The points of the drawn arm: base, each joint, the hand ([[x, y], ...], dof + 1 of them)
   *  and the hand angle. */
  chain(q) {
    const points = [[0, 0]];
    let x = 0;
    let y = 0;
    let angle = 0;
    for (let j = 0; j < this.dof; j++) {
      angle += q[j] + this.offsets[j];
      x += this.lengths[j] * Math.cos(angle);
      y += this.lengths[j] * Math.sin(angle);
      points.push([x, y]);
    }
    return { points, angle };
  }

  /** fk(q): the target the joints reach, [x, y] or [x, y, phi]. */
  fk(q) {
    const { points, angle } = this.chain(q);
    const [x, y] = points[this.dof];
    return this.orientation ? [x, y, wrapAngle(angle)] : [x, y];
  }

  /** Arm.wrap_joints: periodic joints moved by whole turns to the in-limit value nearest home. */
  wrapJoints(q) {
    return q.map((v, j) => {
      if (!this.periodic[j]) return v;
      const [lo, hi] = this.limits[j];
      let w = this.home[j] + wrapAngle(v - this.home[j]);
      if (w > hi) w -= TWO_PI;
      else if (w < lo) w += TWO_PI;
      return w;
    });
  }

  /** Arm.within_limits (atol 1e-9; a joint with exactly one turn of range has no real limit). */
  withinLimits(q) {
    return q.every((v, j) => Number.isFinite(v)
      && (this.free[j] || (v >= this.limits[j][0] - 1e-9 && v <= this.limits[j][1] + 1e-9)));
  }

  /** Arm.target_error: ||reached - target||, the hand angle compared modulo 2 pi. */
  targetError(reached, target) {
    let sum = 0;
    for (let a = 0; a < target.length; a++) {
      const d = a === 2 ? wrapAngle(reached[a] - target[a]) : reached[a] - target[a];
      sum += d * d;
    }
    return Math.sqrt(sum);
  }

  /** The hand positions of the workspace, each passed to visit(x, y): joints on a grid (dof <= 2)
   *  or drawn at random (deterministic), `count` of them about. With `phi` (orientation arms), only
   *  the positions reachable with hand angle phi: the first dof - 1 joints sampled, the last one
   *  set to meet phi (skipped where that angle is beyond its limits). */
  sampleWorkspace(count, visit, phi = null) {
    const free = phi === null ? this.dof : this.dof - 1;
    const rand = mulberry32(12345);
    const perAxis = Math.max(2, Math.round(count ** (1 / free)));
    const grid = free <= 2;
    const total = grid ? perAxis ** free : count;
    const q = new Array(this.dof).fill(0);
    const last = this.dof - 1;
    for (let s = 0; s < total; s++) {
      let rest = s;
      for (let j = 0; j < free; j++) {
        const [lo, hi] = this.limits[j];
        const u = grid ? (rest % perAxis) / (perAxis - 1) : rand();
        rest = Math.floor(rest / perAxis);
        q[j] = lo + (hi - lo) * u;
      }
      let x = 0;
      let y = 0;
      let angle = 0;
      for (let j = 0; j < free; j++) {
        angle += q[j] + this.offsets[j];
        x += this.lengths[j] * Math.cos(angle);
        y += this.lengths[j] * Math.sin(angle);
      }
      if (phi !== null) {
        const [lo, hi] = this.limits[last];
        let need = wrapAngle(phi - angle - this.offsets[last]);  // the last joint's angle, mod 2 pi
        need += TWO_PI * Math.ceil((lo - need) / TWO_PI);          // its first turn >= lo
        if (need > hi) continue;
        x += this.lengths[last] * Math.cos(phi);
        y += this.lengths[last] * Math.sin(phi);
      }
      visit(x, y);
    }
  }
}

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
