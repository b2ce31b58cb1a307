// A format-2 ikmdn model run by onnxruntime-web: refined joints for one target, duplicates merged
// the way `ikmdn solve` merges them (DESIGN.md, "ONNX format 2").

import { onnxMetadata } from "./onnx-meta.js";
import { PlanarArm, wrapAngle } from "./arm.js";

export const MERGE_TOL = 1e-6;  // rad: candidates this close (every joint, modulo 2 pi) are one
export const REACH_TOL = 1e-6;  // IKSolver's reach_tol: a solution reaches its target this closely
const TWO_PI = 2 * Math.PI;
const FORMAT2_OUTPUTS = ["weights", "means", "sigmas", "joints", "positions", "errors",
  "rotation_errors", "within_limits", "distinct"];

function parseJson(meta, key, url) {
  if (!(key in meta)) throw new Error(`${url} has no ${key} metadata: not an ikmdn model`);
  try {
    return JSON.parse(meta[key]);
  } catch (err) {
    throw new Error(`${url}: metadata ${key} is not JSON (${err.message})`);
  }
}

/** |a - b| modulo 2 pi, as merge_duplicates computes it (one reduction, then min(d, 2 pi - d)). */
function turnDistance(a, b) {
  const ta = ((a % TWO_PI) + TWO_PI) % TWO_PI;
  const tb = ((b % TWO_PI) + TWO_PI) % TWO_PI;
  const d = Math.abs(ta - tb);
  return Math.min(d, TWO_PI - d);
}

export class Model {
  /** Fetch url, read its metadata, start an onnxruntime-web session (ort: the module). */
  static async load(ort, url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`cannot load ${url}: HTTP ${response.status}`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    const meta = onnxMetadata(bytes);
    const format = Number(meta["ikmdn.format"]);
    if (!(format === 1 || format === 2)) {
      throw new Error(`${url}: ikmdn.format ${JSON.stringify(meta["ikmdn.format"])}; this page reads formats 1 and 2`);
    }
    const arm = new PlanarArm(parseJson(meta, "ikmdn.arm", url));
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    const wanted = format === 2 ? FORMAT2_OUTPUTS : FORMAT2_OUTPUTS.slice(0, 3);
    const missing = wanted.filter((name) => !session.outputNames.includes(name));
    if (missing.length) throw new Error(`${url}: the graph lacks outputs ${missing.join(", ")}`);
    return new Model(ort, url, session, meta, format, arm, bytes.length);
  }

  constructor(ort, url, session, meta, format, arm, bytes) {
    Object.assign(this, { ort, url, session, meta, format, arm, bytes });
    this.train = meta["ikmdn.train"] ? JSON.parse(meta["ikmdn.train"]) : {};
    this.refine = meta["ikmdn.refine"] ? JSON.parse(meta["ikmdn.refine"]) : null;
  }

  /** Every candidate for one target ([x, y] or [x, y, phi]): {target, reachable, refined,
   *  candidates (K, heaviest first), solutions (the distinct ones, heaviest first)}. */
  async solve(target) {
    const { ort, arm } = this;
    const dim = arm.targetDim;
    const input = this.format === 2
      ? new ort.Tensor("float64", Float64Array.from(target), [1, dim])
      : new ort.Tensor("float32", Float32Array.from(target), [1, dim]);
    const out = await this.session.run({ targets: input });
    const weights = Array.from(out.weights.data, Number);
    const k = weights.length;
    const dof = arm.dof;
    const rows = (data, width) => Array.from({ length: k }, (_, i) => Array.from(data.slice(i * width, (i + 1) * width), Number));
    const sigmas = rows(out.sigmas.data, dof);
    let candidates;
    if (this.format === 2) {
      const joints = rows(out.joints.data, dof);
      const positions = rows(out.positions.data, dim);
      candidates = weights.map((w, i) => ({
        component: i, joints: joints[i], network_weight: w, weight: w, sigma: sigmas[i],
        position: positions[i], error: Number(out.errors.data[i]),
        rotation_error: Number(out.rotation_errors.data[i]),
        within_limits: Boolean(out.within_limits.data[i]), distinct: Boolean(out.distinct.data[i]),
      }));
    } else {  // format 1: the network's modes, unrefined (as `ikmdn solve --no-refine`)
      const means = rows(out.means.data, dof);
      candidates = weights.map((w, i) => {
        const q = arm.wrapJoints(means[i]);
        const position = arm.fk(q);
        return { component: i, joints: q, network_weight: w, weight: w, sigma: sigmas[i], position,
          error: arm.targetError(position, target), rotation_error: 0,
          within_limits: arm.withinLimits(q), distinct: true };
      });
    }
    // Heaviest first (stable); a duplicate's weight goes to the heaviest distinct one it matches.
    const byWeight = candidates.slice().sort((a, b) => b.network_weight - a.network_weight || a.component - b.component);
    byWeight.forEach((c, j) => {
      if (c.distinct) return;
      const into = byWeight.slice(0, j).find((h) => h.distinct
        && h.joints.every((v, d) => turnDistance(v, c.joints[d]) <= MERGE_TOL));
      if (into) {
        into.weight += c.weight;
        c.weight = 0;
      }
    });
    const refined = this.format === 2;
    for (const c of candidates) {
      c.solved = refined && c.distinct && c.within_limits && c.error <= REACH_TOL && c.rotation_error <= REACH_TOL;
    }
    // Final order as in Solutions: distinct first by merged weight (stable over heaviest-first).
    const ranked = byWeight.map((c, r) => [c, r]).sort(([a, ra], [b, rb]) =>
      (b.distinct - a.distinct) || (b.weight - a.weight) || (ra - rb)).map(([c]) => c);
    const solutions = ranked.filter((c) => c.distinct);
    return { target: Array.from(target), reachable: solutions.some((c) => c.solved), refined,
      candidates: ranked, solutions };
  }
}

export { wrapAngle };
