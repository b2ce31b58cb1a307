// The page: load a model, let the user drag the target, draw every solution. Testing hook:
// window.ikmdnState (what is drawn) and window.ikmdnView (world <-> client coordinates).

import { Model } from "./solver.js";

const params = new URLSearchParams(location.search);
// Where the .onnx files are: exported_models/ beside examples/ (`ikmdn serve-demo` serves the same
// layout as `python -m http.server` at the repository root); ?models=URL/ overrides it.
const MODELS_BASE = new URL(params.get("models") || "../../exported_models/", location.href).href;
const ORT_DIR = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
const COLORS = ["#d1495b", "#2e86ab", "#3b9b4a", "#8e5ea2", "#ed8b00", "#6b4f3a", "#d45087", "#1b998b"];
const SHADE = [70, 130, 180];

const canvas = document.getElementById("view");
const ctx = canvas.getContext("2d");
const select = document.getElementById("model");
const phiInput = document.getElementById("phi");
const statusBox = document.getElementById("status");
const tableBody = document.querySelector("#solutions tbody");

const state = {
  status: "loading",      // "loading" | "ready" | "error"
  error: null,
  model: null,            // {name, url, format, arm (the spec), components, refine}
  target: null,           // the target last solved and drawn
  reachable: null,        // some distinct solution reaches it (within 1e-6, within limits)
  refined: null,          // false for format-1 models (raw network modes)
  solutions: [],          // distinct candidates, heaviest first, as drawn
  candidates: [],         // all K candidates (duplicates included)
  busy: false,            // a solve is running or waiting
  solves: 0,              // solves drawn so far
  solve_ms: null,         // how long the last one took
  phi: 0,                 // the hand angle of orientation arms (rad)
};
window.ikmdnState = state;

let ort = null;
let model = null;
let generation = 0;       // bumps on every model switch: stale results are dropped
let view = null;          // {scale (device px per unit), x0, y1, width, height, dpr}
let shade = null;         // offscreen canvas: the workspace
let pending = null;       // the latest target waiting to be solved
let result = null;        // the last solve's result

// -- coordinates ------------------------------------------------------------------------------
function toDevice([x, y]) {
  return [(x - view.x0) * view.scale, (view.y1 - y) * view.scale];
}

window.ikmdnView = {
  /** Client (page) pixel coordinates of world point (x, y). */
  worldToClient(x, y) {
    const rect = canvas.getBoundingClientRect();
    const [px, py] = toDevice([x, y]);
    return { x: rect.left + (px / canvas.width) * rect.width, y: rect.top + (py / canvas.height) * rect.height };
  },
  /** World coordinates of client pixel (cx, cy). */
  clientToWorld(cx, cy) {
    const rect = canvas.getBoundingClientRect();
    const px = ((cx - rect.left) / rect.width) * canvas.width;
    const py = ((cy - rect.top) / rect.height) * canvas.height;
    return { x: view.x0 + px / view.scale, y: view.y1 - py / view.scale };
  },
};

function fitView(arm) {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(canvas.clientWidth * dpr);
  canvas.height = Math.round(canvas.clientHeight * dpr);
  let [xmin, xmax, ymin, ymax] = [0, 0, 0, 0];   // the base is always in view
  arm.sampleWorkspace(20000, (x, y) => {
    xmin = Math.min(xmin, x); xmax = Math.max(xmax, x);
    ymin = Math.min(ymin, y); ymax = Math.max(ymax, y);
  });
  const pad = 0.12 * Math.max(xmax - xmin, ymax - ymin, 0.1 * arm.reach) + 0.05 * arm.reach;
  [xmin, xmax, ymin, ymax] = [xmin - pad, xmax + pad, ymin - pad, ymax + pad];
  const scale = Math.min(canvas.width / (xmax - xmin), canvas.height / (ymax - ymin));
  const cx = (xmin + xmax) / 2;
  const cy = (ymin + ymax) / 2;
  view = { scale, dpr, width: canvas.width, height: canvas.height,
    x0: cx - canvas.width / scale / 2, y1: cy + canvas.height / scale / 2 };
}

// -- workspace shading ------------------------------------------------------------------------
function rasterize(arm, phi, mask, level) {
  const { width, height, scale } = view;
  const samples = Math.min(4e6, Math.max(2e5, (arm.reach * scale) ** 2 * 1.5));
  arm.sampleWorkspace(samples, (x, y) => {
    const px = Math.floor((x - view.x0) * scale);
    const py = Math.floor((view.y1 - y) * scale);
    if (px >= 0 && py >= 0 && px < width && py < height) mask[py * width + px] = Math.max(mask[py * width + px], level);
  }, phi);
}

function dilate(mask, width, height, radius) {
  const out = new Uint8Array(mask.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let v = 0;
      for (let dy = -radius; dy <= radius && v < 2; dy++) {
        const yy = y + dy;
        if (yy < 0 || yy >= height) continue;
        for (let dx = -radius; dx <= radius; dx++) {
          const xx = x + dx;
          if (xx >= 0 && xx < width) v = Math.max(v, mask[yy * width + xx]);
        }
      }
      out[y * width + x] = v;
    }
  }
  return out;
}

function computeShade() {
  const arm = model.arm;
  const { width, height } = view;
  let mask = new Uint8Array(width * height);
  rasterize(arm, null, mask, 1);
  if (arm.orientation) rasterize(arm, state.phi, mask, 2);
  mask = dilate(mask, width, height, Math.max(1, Math.round(1.5 * view.dpr)));
  const image = new ImageData(width, height);
  const alpha = [0, arm.orientation ? 40 : 64, 96];
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    image.data.set([...SHADE, alpha[mask[i]]], 4 * i);
  }
  shade = new OffscreenCanvas(width, height);
  shade.getContext("2d").putImageData(image, 0, 0);
}

// -- drawing ----------------------------------------------------------------------------------
function niceStep(unitsPerCanvas) {
  const raw = unitsPerCanvas / 8;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
}

function drawGrid() {
  const { width, height, scale, dpr } = view;
  const step = niceStep(width / scale);
  const x1 = view.x0 + width / scale;
  const y0 = view.y1 - height / scale;
  ctx.lineWidth = dpr;
  ctx.font = `${11 * dpr}px system-ui, sans-serif`;
  ctx.fillStyle = "#889";
  for (let x = Math.ceil(view.x0 / step) * step; x <= x1; x += step) {
    const [px] = toDevice([x, 0]);
    ctx.strokeStyle = Math.abs(x) < step / 2 ? "#b8bcc4" : "#eceef1";
    ctx.beginPath(); ctx.moveTo(px, 0); ctx.lineTo(px, height); ctx.stroke();
    ctx.fillText(+x.toFixed(6) + "", px + 3 * dpr, height - 5 * dpr);
  }
  for (let y = Math.ceil(y0 / step) * step; y <= view.y1; y += step) {
    const [, py] = toDevice([0, y]);
    ctx.strokeStyle = Math.abs(y) < step / 2 ? "#b8bcc4" : "#eceef1";
    ctx.beginPath(); ctx.moveTo(0, py); ctx.lineTo(width, py); ctx.stroke();
    ctx.fillText(+y.toFixed(6) + "", 4 * dpr, py - 3 * dpr);
  }
}

function drawArm(points, color, width, dashed) {
  const { dpr } = view;
  const px = points.map(toDevice);
  ctx.save();
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = color;
  ctx.lineWidth = width * dpr;
  if (dashed) ctx.setLineDash([6 * dpr, 5 * dpr]);
  ctx.beginPath();
  px.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillStyle = "#fff";
  ctx.lineWidth = 1.5 * dpr;
  for (const [x, y] of px.slice(1, -1)) {   // the joints after the base
    ctx.beginPath(); ctx.arc(x, y, Math.max(3, width * 0.45) * dpr, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
  }
  const [hx, hy] = px[px.length - 1];       // the hand
  ctx.fillStyle = color;
  ctx.beginPath(); ctx.arc(hx, hy, 3 * dpr, 0, 2 * Math.PI); ctx.fill();
  ctx.restore();
}

function drawBase() {
  const { dpr } = view;
  const [bx, by] = toDevice([0, 0]);
  ctx.save();
  ctx.fillStyle = "#39424e";
  ctx.fillRect(bx - 9 * dpr, by - 9 * dpr, 18 * dpr, 18 * dpr);
  ctx.restore();
}

function drawTarget(target, reachable) {
  const { dpr } = view;
  const [tx, ty] = toDevice(target);
  const color = reachable === false ? "#c0392b" : "#1a7f37";
  ctx.save();
  ctx.strokeStyle = color;
  ctx.lineWidth = 2 * dpr;
  ctx.beginPath(); ctx.arc(tx, ty, 11 * dpr, 0, 2 * Math.PI); ctx.stroke();
  const r = 17 * dpr;
  if (reachable === false) {
    ctx.beginPath();
    ctx.moveTo(tx - 7 * dpr, ty - 7 * dpr); ctx.lineTo(tx + 7 * dpr, ty + 7 * dpr);
    ctx.moveTo(tx + 7 * dpr, ty - 7 * dpr); ctx.lineTo(tx - 7 * dpr, ty + 7 * dpr);
    ctx.stroke();
  } else {
    ctx.beginPath();
    ctx.moveTo(tx - r, ty); ctx.lineTo(tx - 5 * dpr, ty); ctx.moveTo(tx + 5 * dpr, ty); ctx.lineTo(tx + r, ty);
    ctx.moveTo(tx, ty - r); ctx.lineTo(tx, ty - 5 * dpr); ctx.moveTo(tx, ty + 5 * dpr); ctx.lineTo(tx, ty + r);
    ctx.stroke();
  }
  if (target.length === 3) {   // the hand angle phi, as an arrow
    const len = 38 * dpr;
    const [ex, ey] = [tx + len * Math.cos(target[2]), ty - len * Math.sin(target[2])];
    ctx.beginPath(); ctx.moveTo(tx, ty); ctx.lineTo(ex, ey); ctx.stroke();
    const a = Math.atan2(ey - ty, ex - tx);
    ctx.beginPath();
    ctx.moveTo(ex, ey);
    ctx.lineTo(ex - 9 * dpr * Math.cos(a - 0.45), ey - 9 * dpr * Math.sin(a - 0.45));
    ctx.lineTo(ex - 9 * dpr * Math.cos(a + 0.45), ey - 9 * dpr * Math.sin(a + 0.45));
    ctx.closePath(); ctx.fillStyle = color; ctx.fill();
  }
  ctx.font = `600 ${13 * dpr}px system-ui, sans-serif`;
  ctx.fillStyle = color;
  const label = reachable === false ? "unreachable" : reachable ? "target" : "";
  if (label) {   // below right of the target, or below left near the canvas's right edge
    const w = ctx.measureText(label).width;
    const lx = tx + 14 * dpr + w > canvas.width - 4 * dpr ? tx - 14 * dpr - w : tx + 14 * dpr;
    ctx.fillText(label, lx, ty + 26 * dpr);
  }
  ctx.restore();
}

function caption() {
  const { dpr } = view;
  const lines = [`${state.model.name}.onnx · K = ${state.model.components} · format ${model.format}`];
  if (result) {
    const n = result.solutions.filter((c) => c.solved).length;
    lines.push(!result.refined ? "raw network modes (format 1: unrefined)"
      : result.reachable ? `${n} solution${n === 1 ? "" : "s"}` : "unreachable: closest approaches shown");
  }
  ctx.save();
  ctx.font = `600 ${15 * dpr}px system-ui, sans-serif`;
  const w = Math.max(...lines.map((l) => ctx.measureText(l).width)) + 16 * dpr;
  const left = canvas.width - w - 8 * dpr;   // top right: clear of the y axis labels
  ctx.fillStyle = "rgba(255,255,255,0.85)";
  ctx.fillRect(left, 8 * dpr, w, (lines.length * 20 + 10) * dpr);
  ctx.fillStyle = "#1d232a";
  lines.forEach((l, i) => ctx.fillText(l, left + 8 * dpr, (28 + 20 * i) * dpr));
  ctx.restore();
}

function draw() {
  if (!view) return;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#fcfcfa";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  drawGrid();
  if (shade) ctx.drawImage(shade, 0, 0);
  drawBase();
  if (result) {
    // Candidates that miss first (thin, dashed), then solutions lightest first: heavy ones on top.
    const order = result.solutions.slice().reverse();
    for (const c of order) if (!c.solved) drawArm(c.drawn.points, "rgba(110,110,120,0.75)", c.drawn.line_width, true);
    for (const c of order) if (c.solved || !result.refined) drawArm(c.drawn.points, c.drawn.color, c.drawn.line_width, !result.refined);
    drawTarget(result.target, result.refined ? result.reachable : null);
  }
  caption();
}

// -- the solution table -----------------------------------------------------------------------
function fmt(v, digits = 1) {   // radians as degrees, never "-0.0"
  return (v * 180 / Math.PI).toFixed(digits).replace(/^-(0\.?0*)$/, "$1");
}

function showTable() {
  tableBody.replaceChildren();
  if (!result) return;
  for (const c of result.solutions) {
    const row = document.createElement("tr");
    if (!c.solved) row.className = "miss";
    const how = !result.refined ? "unrefined" : c.solved ? "reaches"
      : !c.within_limits ? "beyond a limit" : "closest approach";
    row.innerHTML = `<td class="swatch"><span style="border-color:${c.solved || !result.refined ? c.drawn.color : "#999"}"></span></td>`
      + `<td>${(100 * c.weight).toFixed(1)}%</td>`
      + `<td>${c.joints.map((q) => fmt(q)).join(", ")}</td>`
      + `<td>${c.error.toExponential(1)}</td><td>${how}</td>`;
    tableBody.append(row);
  }
}

function showStatus() {
  if (!result) return;
  const t = result.target;
  const where = `x = ${t[0].toFixed(3)}, y = ${t[1].toFixed(3)}` + (t.length === 3 ? `, φ = ${fmt(t[2], 0)}°` : "");
  const n = result.solutions.filter((c) => c.solved).length;
  document.getElementById("timing").textContent = `solved in ${state.solve_ms.toFixed(1)} ms (network and refinement, in this browser)`;
  statusBox.className = !result.refined ? "" : result.reachable ? "reachable" : "unreachable";
  statusBox.textContent = !result.refined
    ? `target ${where}: ${result.solutions.length} raw modes (format-1 model: unrefined, no reachability)`
    : result.reachable ? `target ${where}: reachable, ${n} solution${n === 1 ? "" : "s"}`
      : `target ${where}: NOT reachable (closest candidates shown)`;
}

// -- solving ----------------------------------------------------------------------------------
function decorate(res) {
  res.solutions.forEach((c, i) => {
    c.drawn = { points: model.arm.chain(c.joints).points, color: COLORS[i % COLORS.length],
      line_width: 2 + 14 * c.weight };
  });
  return res;
}

function requestSolve(target) {
  pending = { target, generation };
  state.busy = true;
  if (!requestSolve.running) pump();
}

async function pump() {
  requestSolve.running = true;
  try {
    while (pending) {
      const job = pending;
      pending = null;
      const started = performance.now();
      const res = await model.solve(job.target);
      state.solve_ms = performance.now() - started;
      if (job.generation !== generation) continue;
      result = decorate(res);
      state.model.components = res.candidates.length;
      Object.assign(state, {
        target: res.target, reachable: res.refined ? res.reachable : null, refined: res.refined,
        solutions: res.solutions.map(({ drawn, ...c }) => ({ ...c, points: drawn.points, line_width: drawn.line_width, color: drawn.color })),
        candidates: res.candidates.map(({ drawn, ...c }) => c),
        solves: state.solves + 1,
      });
      draw(); showTable(); showStatus();
    }
  } catch (err) {
    fail(err);
  } finally {
    requestSolve.running = false;
    state.busy = pending !== null;
  }
}

function currentTarget(x, y) {
  return model.arm.orientation ? [x, y, state.phi] : [x, y];
}

// -- input ------------------------------------------------------------------------------------
let dragging = false;
function pointerTarget(event) {
  const p = window.ikmdnView.clientToWorld(event.clientX, event.clientY);
  requestSolve(currentTarget(p.x, p.y));
}
canvas.addEventListener("pointerdown", (event) => {
  if (!model) return;
  dragging = true;
  canvas.setPointerCapture(event.pointerId);
  canvas.focus();
  pointerTarget(event);
});
canvas.addEventListener("pointermove", (event) => { if (dragging && model) pointerTarget(event); });
const stop = () => { dragging = false; };
canvas.addEventListener("pointerup", stop);
canvas.addEventListener("pointercancel", stop);
canvas.addEventListener("keydown", (event) => {
  if (!model || !state.target) return;
  const step = 0.01 * model.arm.reach * (event.shiftKey ? 5 : 1);
  const move = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] }[event.key];
  if (!move) return;
  event.preventDefault();
  requestSolve(currentTarget(state.target[0] + move[0], state.target[1] + move[1]));
});
canvas.addEventListener("wheel", (event) => {   // the hand angle, for orientation arms
  if (!model || !model.arm.orientation) return;
  event.preventDefault();
  setPhi(Number(phiInput.value) + (event.deltaY > 0 ? -5 : 5));
}, { passive: false });

let shadeQueued = false;
function setPhi(degrees) {
  const d = ((((degrees + 180) % 360) + 360) % 360) - 180;
  phiInput.value = String(d);
  document.getElementById("phi-value").textContent = `${d}°`;
  state.phi = d * Math.PI / 180;
  if (state.target) requestSolve(currentTarget(state.target[0], state.target[1]));
  if (!shadeQueued) {   // re-shade at most once per frame
    shadeQueued = true;
    requestAnimationFrame(() => { shadeQueued = false; computeShade(); draw(); });
  }
}
phiInput.addEventListener("input", () => setPhi(Number(phiInput.value)));

// -- loading ----------------------------------------------------------------------------------
function fail(err) {
  console.error(err);
  state.status = "error";
  state.error = String(err && err.message ? err.message : err);
  statusBox.className = "error";
  statusBox.textContent = state.error;
}

async function loadOrt() {
  if (ort) return ort;
  try {
    ort = await import(ORT_DIR + "ort.wasm.min.mjs");
  } catch (err) {
    throw new Error("onnxruntime-web is missing: run `npm ci` in examples/web, then reload "
      + `(could not import ${ORT_DIR}ort.wasm.min.mjs: ${err.message})`);
  }
  ort.env.wasm.numThreads = 1;      // no SharedArrayBuffer, so no cross-origin isolation needed
  ort.env.wasm.wasmPaths = ORT_DIR;  // served locally: nothing is fetched from the internet
  return ort;
}

async function selectModel(name) {
  const mine = ++generation;
  Object.assign(state, { status: "loading", error: null, model: null, target: null, reachable: null,
    solutions: [], candidates: [], busy: false });
  pending = null;
  result = null;
  model = null;
  statusBox.className = "";
  statusBox.textContent = `loading ${name}.onnx…`;
  tableBody.replaceChildren();
  try {
    const loaded = await Model.load(await loadOrt(), new URL(`${name}.onnx`, MODELS_BASE).href);
    if (mine !== generation) return;
    model = loaded;
    const arm = model.arm;
    state.model = { name, url: model.url, format: model.format, arm: JSON.parse(model.meta["ikmdn.arm"]),
      components: null, refine: model.refine };   // components: K, read off the first solve
    document.getElementById("phi-row").hidden = !arm.orientation;
    document.getElementById("phi-legend").hidden = !arm.orientation;
    document.getElementById("joints-head").textContent = `joints ${arm.dof > 2 ? "q1..q" + arm.dof : "q1, q2"} (°)`;
    fitView(arm);
    computeShade();
    const info = [`${name}.onnx: ${(model.bytes / 1024).toFixed(0)} KB, ikmdn ${model.meta["ikmdn.version"] ?? "?"}, format ${model.format}`,
      `links ${arm.lengths.join(", ")}`];
    if (model.format !== 2) info.push("format 1 holds the network only: re-export the model (format 2) for refined, exact solutions");
    document.getElementById("model-info").textContent = info.join(" · ");
    // A first target well inside the workspace, the elbows bent (not the stretched singular arm).
    const start = arm.fk(arm.limits.map(([lo, hi], j) => lo + (hi - lo) * (j === 0 ? 0.6 : 0.7)));
    state.status = "ready";
    if (arm.orientation) setPhi(Math.round(start[2] * 180 / Math.PI));
    requestSolve(currentTarget(start[0], start[1]));
  } catch (err) {
    if (mine === generation) fail(err);
  }
}

let resizeTimer = null;
window.addEventListener("resize", () => {   // refit the canvas to its new size, then redraw
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (!model) return;
    fitView(model.arm);
    computeShade();
    draw();
  }, 150);
});

select.addEventListener("change", () => {
  const url = new URL(location.href);
  url.searchParams.set("model", select.value);
  history.replaceState(null, "", url);
  selectModel(select.value);
});
const first = params.get("model");
if (first && [...select.options].some((o) => o.value === first)) select.value = first;
selectModel(select.value);
