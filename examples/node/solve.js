#!/usr/bin/env node
'use strict';
/*
 * Solve inverse kinematics with an ikmdn format-2 ONNX model from Node.js (onnxruntime-node).
 *
 *   node solve.js MODEL.onnx TARGETS.csv  >  solutions.json
 *
 * Prints the JSON of `ikmdn solve --model MODEL.onnx --targets TARGETS.csv --format json`
 * (the contract in DESIGN.md): {"model", "arm", "joint_names", "solutions": [{"target",
 * "reachable", "candidates": [{"joints", "weight", "sigma", "position", "error",
 * "within_limits"} (+ "rotation_error_deg" for pose arms)], "fallback" (spatial arms)}]}.
 *
 * A format-2 model does the work inside the graph: every mixture mode refined, forward-checked,
 * projected onto the joint limits and flagged `distinct` (DESIGN.md, "ONNX format 2"). What is
 * left to a client, and done here, is the contract's bookkeeping:
 *   - candidates taken heaviest first (the network's weights, ties in the network's order);
 *   - a duplicate's weight summed into the heaviest distinct candidate it matches (within
 *     MERGE_TOL rad in every joint, angles modulo 2 pi), exactly as `ikmdn solve` merges;
 *   - the distinct candidates printed by merged weight, largest first;
 *   - reachable: some distinct candidate within limits with error and rotation error <= REACH_TOL;
 *   - "fallback": false for spatial arms (a graph has no fallback seeds).
 * The model's metadata (ikmdn.arm) gives "arm" and "joint_names"; onnxruntime's JavaScript API
 * does not expose custom metadata, so it is read from the file's protobuf directly.
 *
 * Targets file: as `ikmdn solve --targets` takes a .csv: one target per line, numbers separated
 * by commas, '#' comments, blank lines skipped, an optional header line naming the columns (the
 * arm's target names, e.g. x,y; pose arms: x,y,z,qw,qx,qy,qz). Pose arms take the position and a
 * unit quaternion (w first) and give the model the 9-number encoding (position, then the first
 * two columns of the rotation matrix), computed as ikmdn.arms.serial.pose_targets does.
 *
 * Numbers are printed as Python prints floats (repr), so the output matches the Python CLI's
 * byte layout as well as its values. Exit status: 0 done; 2 bad usage or input (one line on
 * stderr); 1 the model failed to run.
 */

const fs = require('node:fs');

const FORMAT = '2';                       // the ikmdn.format this client reads
const MERGE_TOL = 1e-6;                   // rad, as ikmdn.solve.MERGE_TOL
const REACH_TOL = 1e-6;                   // IKSolver's default reach_tol
const TWO_PI = 2.0 * Math.PI;
const MAX_MODEL_BYTES = 512 * 1024 * 1024;
const MAX_LINE_BYTES = 64 * 1024;
const MAX_ABS = 3.4028234663852886e38;    // float32 max: larger values do not fit the network
const MAX_TARGET = 1e9;                   // |target coordinate| the model takes (runtime.MAX_TARGET)
const CHUNK_ROWS = 65536;                 // rows per value check, as targets_io
const BATCH_ROWS = 4096;                  // targets per session.run
const POSE_INPUT = ['x', 'y', 'z', 'qw', 'qx', 'qy', 'qz'];
const OUTPUTS = {                         // format 2's outputs and their element types
  weights: 'float32', means: 'float32', sigmas: 'float32', joints: 'float64',
  positions: 'float64', errors: 'float64', rotation_errors: 'float64',
  within_limits: 'bool', distinct: 'bool',
};
const NUMBER_RE = /^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/;
const NON_FINITE_RE = /^[+-]?(?:nan|inf|infinity)$/i;

class InputError extends Error { }        // bad usage or input: exit status 2
class JobError extends Error { }          // the job failed: exit status 1

// -- Python's formatting --------------------------------------------------------------------------

/** A float as Python's repr writes it: the same shortest round-trip digits as JavaScript's
 * String(x), laid out as Python does (exponent below 1e-4 and from 1e16, at least two exponent
 * digits, ".0" on whole numbers). */
function pyFloat(x) {
  if (!Number.isFinite(x)) throw new JobError(`internal error: ${x} is not a finite number`);
  const text = String(x);
  const a = Math.abs(x);
  if (a >= 1e-4 && a < 1e16) return text.includes('.') ? text : `${text}.0`;
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mantissa, exp] = a.toExponential().split('e');
  const e = Number(exp);
  return `${x < 0 ? '-' : ''}${mantissa}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
}

/** Python's format(x, '.{precision}g'). */
function pyG(x, precision = 6) {
  if (!Number.isFinite(x)) return String(x).toLowerCase().replace('infinity', 'inf');
  if (x === 0) return Object.is(x, -0) ? '-0' : '0';
  const [mantissa, exp] = x.toExponential(precision - 1).split('e');
  const e = Number(exp);
  const strip = (s) => (s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s);
  if (e < -4 || e >= precision) {
    return `${strip(mantissa)}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
  }
  return strip(x.toFixed(Math.max(0, precision - 1 - e)));
}

/** A string as Python's json.dumps writes it (ensure_ascii). */
function pyString(s) {
  return JSON.stringify(s).replace(/[^\x20-\x7e]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** A value as Python's json.dumps(value, allow_nan=False) writes it; every number a float. */
function pyJson(value) {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') return pyFloat(value);
  if (typeof value === 'string') return pyString(value);
  if (Array.isArray(value) || ArrayBuffer.isView(value)) {
    return `[${Array.from(value, pyJson).join(', ')}]`;
  }
  return `{${Object.entries(value).map(([k, v]) => `${pyString(k)}: ${pyJson(v)}`).join(', ')}}`;
}

/** repr() of a string as Python shows it in messages (quoted, escaped; cut to 40 characters). */
function show(text) {
  const repr = (s) => {
    const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
    const body = s.replace(/[\\\x00-\x1f\x7f]/g, (c) => ({ '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r' }[c]
      || `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`));
    return quote + (quote === "'" ? body.replace(/'/g, "\\'") : body) + quote;
  };
  const chars = Array.from(text);   // code points, as Python counts
  return chars.length <= 40 ? repr(text) : `${repr(chars.slice(0, 40).join(''))}... (${chars.length} characters)`;
}

/** A path as Python's str(pathlib.Path(path)) writes it (the CLI's "model"). */
function pyPath(path) {
  const root = path.startsWith('//') && !path.startsWith('///') ? '//' : path.startsWith('/') ? '/' : '';
  const parts = path.split('/').filter((p) => p !== '' && p !== '.');
  return root + parts.join('/') || '.';
}

// -- the model file -------------------------------------------------------------------------------

/** The metadata_props (field 14 of ModelProto) of an ONNX file's bytes, as a Map. */
function readMetadata(bytes, name) {
  let pos = 0;
  const bad = () => new InputError(`${name} is not an ONNX model file (its protobuf does not parse)`);
  const varint = (end) => {
    let value = 0;
    for (let scale = 1; ; scale *= 128) {
      if (pos >= end || scale > 2 ** 63) throw bad();
      const b = bytes[pos++];
      value += (b & 0x7f) * scale;
      if (b < 0x80) return value;
    }
  };
  const fields = function* (start, end) {   // [field number, wire type, value or [from, to]]
    pos = start;
    while (pos < end) {
      const tag = varint(end);
      const field = Math.floor(tag / 8);
      const wire = tag % 8;
      if (wire === 0) yield [field, wire, varint(end)];
      else if (wire === 1 || wire === 5) {
        pos += wire === 1 ? 8 : 4;
        if (pos > end) throw bad();
      } else if (wire === 2) {
        const length = varint(end);
        if (pos + length > end) throw bad();
        const from = pos;
        pos += length;
        yield [field, wire, [from, pos]];
      } else throw bad();
    }
  };
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const text = ([from, to]) => {
    try { return decoder.decode(bytes.subarray(from, to)); } catch { throw bad(); }
  };
  const entries = [];
  for (const [field, wire, value] of fields(0, bytes.length)) {
    if (field === 14 && wire === 2) entries.push(value);
  }
  const metadata = new Map();
  for (const [from, to] of entries) {
    let key = '';
    let val = '';
    for (const [field, wire, range] of fields(from, to)) {
      if (wire !== 2) continue;
      if (field === 1) key = text(range);
      else if (field === 2) val = text(range);
    }
    if (metadata.has(key)) throw new InputError(`${name}: metadata key ${key} appears more than once`);
    metadata.set(key, val);
  }
  return metadata;
}

function isCount(v) {
  return Number.isInteger(v) && v >= 1;
}

/** What the client needs of the arm spec (metadata ikmdn.arm): names, sizes, target kind. */
function armInfo(spec, name) {
  const where = `${name}: ikmdn.arm`;
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) {
    throw new InputError(`${where} must be a JSON object`);
  }
  if (typeof spec.name !== 'string') throw new InputError(`${where} lacks a "name" string`);
  if (typeof spec.kind !== 'string') throw new InputError(`${where} lacks a "kind" string`);
  if (!isCount(spec.dof) || !isCount(spec.target_dim)) {
    throw new InputError(`${where} must give "dof" and "target_dim" as positive integers`);
  }
  const dof = spec.dof;
  let jointNames = spec.joint_names;
  if (jointNames === undefined || jointNames === null) {   // as Arm.joint_names defaults them
    const stem = spec.kind === 'serial' ? 'joint' : 'q';
    jointNames = Array.from({ length: dof }, (_, i) => `${stem}${i + 1}`);
  } else if (!Array.isArray(jointNames) || jointNames.length !== dof
             || !jointNames.every((n) => typeof n === 'string')) {
    throw new InputError(`${where} "joint_names" must be ${dof} strings`);
  }
  const pose = spec.target === 'pose';
  if (pose && spec.target_dim !== 9) throw new InputError(`${where}: a pose arm must have target_dim 9`);
  let targetNames;
  if (pose) targetNames = POSE_INPUT;
  else if (spec.kind === 'planar') targetNames = spec.orientation ? ['x', 'y', 'phi'] : ['x', 'y'];
  else if (spec.kind === 'serial') targetNames = ['x', 'y', 'z'];
  else targetNames = [];
  if (!pose && targetNames.length !== spec.target_dim) targetNames = [];  // no header accepted
  return {
    name: spec.name, kind: spec.kind, dof, targetDim: spec.target_dim, jointNames, pose,
    inputWidth: pose ? 7 : spec.target_dim, inputNames: targetNames,
    fallback: spec.kind !== 'planar',   // `ikmdn solve` reports "fallback" for spatial arms
  };
}

/** The model file checked against format 2's contract: its bytes and arm. */
function loadModelFile(path) {
  let stat;
  try { stat = fs.statSync(path); } catch { throw new InputError(`model file ${path} does not exist`); }
  if (!stat.isFile()) throw new InputError(`model file ${path} is not a file`);
  if (stat.size > MAX_MODEL_BYTES) {
    throw new InputError(`model file ${path} is larger than ${MAX_MODEL_BYTES} bytes`);
  }
  let bytes;
  try { bytes = fs.readFileSync(path); } catch (e) {
    throw new InputError(`cannot read model file ${path}: ${e.code || e.message}`);
  }
  const metadata = readMetadata(bytes, path);
  const format = metadata.get('ikmdn.format');
  if (format === undefined) {
    throw new InputError(`${path} is not an ikmdn model (no ikmdn.format in its metadata)`);
  }
  if (format !== FORMAT) {
    throw new InputError(`${path} is ikmdn format ${format}; this client needs format ${FORMAT}, `
      + 'the refined solver in the graph (`ikmdn export` writes it)');
  }
  let spec;
  try { spec = JSON.parse(metadata.get('ikmdn.arm')); } catch {
    throw new InputError(`${path}: ikmdn.arm in its metadata is missing or not JSON`);
  }
  return { bytes, arm: armInfo(spec, path) };
}

// -- the targets file -----------------------------------------------------------------------------

/** Rows of numbers (each {line, values}) from a targets .csv, checked as `ikmdn solve` checks. */
function readTargets(path, arm) {
  if (!path.toLowerCase().endsWith('.csv')) {
    throw new InputError(`targets file must end in .csv, got ${path}`);
  }
  let stat;
  try { stat = fs.statSync(path); } catch { throw new InputError(`targets file ${path} does not exist`); }
  if (stat.isDirectory()) throw new InputError(`targets file ${path} is a folder`);
  let bytes;
  try { bytes = fs.readFileSync(path); } catch (e) {
    throw new InputError(`cannot read targets file ${path}: ${e.code || e.message}`);
  }
  const width = arm.inputWidth;
  const names = arm.inputNames;
  const header = names.map((n) => n.trim().toLowerCase());
  const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  const rows = [];
  let seenContent = false;
  let start = 0;
  for (let number = 1; start < bytes.length; number++) {
    let end = bytes.indexOf(0x0a, start);
    end = end < 0 ? bytes.length : end + 1;
    if (end - start > MAX_LINE_BYTES) {
      throw new InputError(`${path} line ${number} is longer than ${MAX_LINE_BYTES} bytes; `
        + 'expected one target per line');
    }
    let raw = bytes.subarray(start, end);
    start = end;
    if (number === 1 && raw[0] === 0xef && raw[1] === 0xbb && raw[2] === 0xbf) raw = raw.subarray(3);
    let line;
    try { line = decoder.decode(raw); } catch {
      throw new InputError(`${path} line ${number} is not UTF-8 text; expected a CSV file of numbers`);
    }
    const text = line.split('#', 1)[0].trim();
    if (!text) continue;
    const first = !seenContent;
    seenContent = true;
    const fields = text.split(',').map((f) => f.trim());
    const bad = fields.find((f) => !NUMBER_RE.test(f));
    if (bad !== undefined && !fields.every((f) => NUMBER_RE.test(f) || NON_FINITE_RE.test(f))) {
      if (first && header.length && fields.length === header.length
          && fields.every((f, i) => f.toLowerCase() === header[i])) continue;
      if (NON_FINITE_RE.test(bad)) throw new InputError(`${path} line ${number}: NaN or infinite value`);
      const hint = first && names.length
        ? ` (a header line must name the ${width} columns: ${names.join(',')})` : '';
      throw new InputError(`${path} line ${number}: ${show(bad)} is not a number${hint}`);
    }
    if (fields.length !== width) {
      throw new InputError(`${path} line ${number}: expected ${width} comma-separated numbers, `
        + `got ${fields.length}`);
    }
    rows.push({ line: number, values: fields.map(Number) });
    if (rows.length % CHUNK_ROWS === 0) checkRows(path, arm, rows.slice(-CHUNK_ROWS));
  }
  if (rows.length % CHUNK_ROWS) checkRows(path, arm, rows.slice(rows.length - (rows.length % CHUNK_ROWS)));
  return rows;
}

/** The value checks of `ikmdn solve`, in its order over a chunk of rows: finite and float32,
 * coordinates within MAX_TARGET (pose arms: x y z), non-zero quaternions. */
function checkRows(path, arm, rows) {
  const fail = (row, why) => { throw new InputError(`${path} line ${row.line}: ${why}`); };
  for (const row of rows) {
    if (!row.values.every(Number.isFinite)) fail(row, 'NaN or infinite value');
  }
  for (const row of rows) {
    const big = row.values.find((v) => Math.abs(v) > MAX_ABS);
    if (big !== undefined) fail(row, `${pyG(big)} does not fit in float32 (|value| must be below 3.4e38)`);
  }
  const columns = arm.pose ? 3 : arm.inputWidth;
  const names = arm.inputNames.length ? arm.inputNames : Array.from({ length: columns }, (_, i) => `column ${i + 1}`);
  for (const row of rows) {
    const col = row.values.slice(0, columns).findIndex((v) => !(Math.abs(v) <= MAX_TARGET));
    if (col >= 0) {
      fail(row, `${names[col]} = ${pyG(row.values[col], 3)} is beyond +-1e+09, the range of targets `
        + 'the model takes (it computes in float32)');
    }
  }
  if (arm.pose) {
    for (const row of rows) {
      const [, , , w, x, y, z] = row.values;
      if (!(Math.sqrt(w * w + x * x + y * y + z * z) >= 1e-12)) {
        fail(row, 'the quaternion (qw, qx, qy, qz) is zero; give a unit quaternion');
      }
    }
  }
}

/** The 9-number pose target (x y z, r11 r21 r31, r12 r22 r32) of x y z qw qx qy qz, computed as
 * ikmdn.arms.serial.pose_targets does (quaternion normalised, then the rotation matrix). */
function poseTarget(values) {
  const [px, py, pz, qw, qx, qy, qz] = values;
  const norm = Math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz);
  const [w, x, y, z] = [qw / norm, qx / norm, qy / norm, qz / norm];
  return [px, py, pz,
    1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y),    // column 1
    2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x)];   // column 2
}

// -- solving --------------------------------------------------------------------------------------

/** Angles reduced modulo 2 pi into [0, 2 pi), as numpy's `%` (the sign of the divisor). */
function turn(a) {
  const r = a % TWO_PI;
  return r < 0 ? r + TWO_PI : r === 0 ? 0 : r;
}

/** The solution objects of one batch of n targets from the graph's outputs (by name). */
function solutions(out, targets, n, arm, first = 0) {
  const K = Number(out.weights.dims[1]);
  const { dof, targetDim } = arm;
  const d = Object.fromEntries(Object.entries(out).map(([k, t]) => [k, t.data]));
  for (const name of Object.keys(OUTPUTS)) {
    const t = out[name];
    if (t.type !== OUTPUTS[name]) {
      throw new JobError(`the model's output ${name} is ${t.type}, expected ${OUTPUTS[name]}`);
    }
    const dims = t.dims.map(Number);
    const want = ['means', 'sigmas', 'joints'].includes(name) ? [n, K, dof]
      : name === 'positions' ? [n, K, targetDim] : [n, K];
    if (dims.join() !== want.join()) {
      throw new JobError(`the model's output ${name} has shape [${dims}], expected [${want}]`);
    }
    if (OUTPUTS[name] !== 'bool') {
      const i = t.data.findIndex((v) => !Number.isFinite(v));
      if (i >= 0) {
        throw new JobError(`target ${first + Math.floor(i / (t.data.length / n))} (counting from 0): `
          + `the model's ${name} are NaN or infinite, so nothing is written for it (is the target `
          + 'of a magnitude the model can take?)');
      }
    }
  }
  const result = [];
  for (let i = 0; i < n; i++) {
    // Heaviest first by the network's weights (stable: ties keep the network's order).
    const order = Array.from({ length: K }, (_, k) => k)
      .sort((a, b) => d.weights[i * K + b] - d.weights[i * K + a]);
    const weight = new Float64Array(K);
    order.forEach((k) => { weight[k] = d.weights[i * K + k]; });
    const distinct = (k) => d.distinct[i * K + k] !== 0;
    const turns = (k) => Array.from(d.joints.subarray((i * K + k) * dof, (i * K + k + 1) * dof), turn);
    const kept = [];   // distinct candidates so far, heaviest first
    for (const k of order) {
      if (distinct(k)) {
        kept.push([k, turns(k)]);
        continue;
      }
      // A duplicate: its weight goes to the heaviest distinct candidate it matches (the graph
      // found one; should rounding make none match here, the nearest takes it).
      const t = turns(k);
      let into = -1;
      let nearest = Infinity;
      for (const [m, u] of kept) {
        const gap = Math.max(...t.map((a, j) => { const g = Math.abs(a - u[j]); return Math.min(g, TWO_PI - g); }));
        if (gap <= MERGE_TOL) { into = m; break; }
        if (gap < nearest) { nearest = gap; into = m; }
      }
      if (into >= 0) weight[into] += weight[k];
      weight[k] = 0;
    }
    const shown = kept.map(([k]) => k).sort((a, b) => weight[b] - weight[a]);  // stable
    let reachable = false;
    const candidates = shown.map((k) => {
      const c = i * K + k;
      const ok = d.within_limits[c] !== 0;
      if (ok && d.errors[c] <= REACH_TOL && d.rotation_errors[c] <= REACH_TOL) reachable = true;
      const candidate = {
        joints: d.joints.subarray(c * dof, (c + 1) * dof),
        weight: weight[k],
        sigma: Array.from(d.sigmas.subarray(c * dof, (c + 1) * dof)),
        position: d.positions.subarray(c * targetDim, (c + 1) * targetDim),
        error: d.errors[c],
        within_limits: ok,
      };
      if (arm.pose) candidate.rotation_error_deg = d.rotation_errors[c] * (180 / Math.PI);
      return candidate;
    });
    const entry = { target: targets.subarray(i * targetDim, (i + 1) * targetDim), reachable, candidates };
    if (arm.fallback) entry.fallback = false;   // a format-2 graph has no fallback seeds
    result.push(entry);
  }
  return result;
}

async function main(argv) {
  const args = argv.slice(2);
  if (args.length === 1 && (args[0] === '-h' || args[0] === '--help')) {
    process.stdout.write('usage: node solve.js MODEL.onnx TARGETS.csv\n'
      + 'Prints every IK solution of each target as `ikmdn solve --format json` does.\n');
    return 0;
  }
  if (args.length !== 2) {
    throw new InputError(`usage: node solve.js MODEL.onnx TARGETS.csv (got ${args.length} arguments)`);
  }
  const [modelPath, targetsPath] = args;
  const model = loadModelFile(modelPath);
  const { arm } = model;
  const rows = readTargets(targetsPath, arm);

  let ort;
  try { ort = require('onnxruntime-node'); } catch (e) {
    throw new JobError('cannot load onnxruntime-node (run `npm ci` in examples/node): '
      + `${String(e.message).split('\n')[0]}`);
  }
  let session;
  try {
    session = await ort.InferenceSession.create(model.bytes, {
      executionMode: 'sequential', graphOptimizationLevel: 'all', logSeverityLevel: 3,
      extra: { session: { intra_op: { allow_spinning: '0' } } },
    });
  } catch (e) {
    throw new InputError(`${modelPath}: onnxruntime cannot load it: ${String(e.message).split('\n')[0]}`);
  }
  const missing = ['targets'].filter((n) => !session.inputNames.includes(n))
    .concat(Object.keys(OUTPUTS).filter((n) => !session.outputNames.includes(n)));
  if (missing.length) {
    throw new InputError(`${modelPath} lacks format 2's ${missing.join(', ')}`);
  }

  const head = `{"model": ${pyString(pyPath(modelPath))}, "arm": ${pyString(arm.name)}, `
    + `"joint_names": ${pyJson(arm.jointNames)}, "solutions": [`;
  const write = (text) => new Promise((resolve, reject) => {
    process.stdout.write(text, (e) => (e ? reject(e) : resolve()));
  });
  let written = 0;
  try {
    for (let s = 0; s < rows.length; s += BATCH_ROWS) {
      const batch = rows.slice(s, s + BATCH_ROWS);
      const n = batch.length;
      const targets = new Float64Array(n * arm.targetDim);
      batch.forEach((row, i) => targets.set(arm.pose ? poseTarget(row.values) : row.values, i * arm.targetDim));
      let out;
      try {
        out = await session.run({ targets: new ort.Tensor('float64', targets, [n, arm.targetDim]) });
      } catch (e) {
        throw new JobError(`onnxruntime failed: ${String(e.message).split('\n')[0]}`);
      }
      const text = solutions(out, targets, n, arm, s)
        .map((entry, i) => `${s + i === 0 ? '' : ', '}\n  ${pyJson(entry)}`).join('');
      await write(written === 0 ? head + text : text);
      written += n;
    }
    await write(written === 0 ? `${head}\n]}\n` : '\n]}\n');
  } catch (e) {
    if (written === 0) throw e;
    // Nothing partial: the targets already written stay whole and the document still parses.
    await write(`\n], "error": ${pyString(e.message)}}\n`);
    throw new JobError(`stopped after ${written} targets (those were written in full): ${e.message}`);
  }
  return 0;
}

if (require.main === module) {
  main(process.argv).then((code) => { process.exitCode = code; }, (e) => {
    if (e && e.code === 'EPIPE') { process.exitCode = 1; return; }   // the reader went away
    const known = e instanceof InputError || e instanceof JobError;
    process.stderr.write(`Error: ${known ? e.message : String(e && e.stack || e).split('\n')[0]}\n`);
    process.exitCode = e instanceof InputError ? 2 : 1;
  });
}

module.exports = { pyFloat, pyG, pyJson, pyPath, readMetadata, poseTarget, solutions, main };
