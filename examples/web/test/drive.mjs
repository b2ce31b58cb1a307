// Drive the demo page in Debian's chromium (headless, through playwright-core): for each step of a
// plan, pick the model, set the hand angle, drag the target to each point with the mouse, and
// read back what the page drew (window.ikmdnState). Prints one JSON object on stdout.
//
//   node test/drive.mjs URL PLAN.json [SCREENSHOT.png]
//
// PLAN: [{"model": "bishop", "phi_deg": null, "points": [[x, y], ...], "screenshot": false}, ...]
// (world coordinates; the page's target is where the mouse lands, so read it from the output).
// A step's "screenshot" (true: SCREENSHOT.png; or a path of its own) is taken after its drags. Environment: CHROMIUM (default /usr/bin/chromium).

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, planPath, screenshotPath] = process.argv.slice(2);
if (!url || !planPath) {
  console.error("usage: node test/drive.mjs URL PLAN.json [SCREENSHOT.png]");
  process.exit(2);
}
const plan = JSON.parse(readFileSync(planPath, "utf8"));
const profile = mkdtempSync(join(tmpdir(), "ikmdn-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1280, height: 780 },
  deviceScaleFactor: 1,
});
const problems = [];   // console errors, page errors, failed requests
const out = { url, steps: [], problems };
try {
  const page = context.pages()[0] ?? await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on("response", (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`); });
  await page.goto(url);
  const settled = () => page.waitForFunction(
    () => window.ikmdnState && (window.ikmdnState.status === "error"
      || (window.ikmdnState.status === "ready" && !window.ikmdnState.busy && window.ikmdnState.solves > 0)),
    null, { timeout: 60000 });
  const state = () => page.evaluate(() => JSON.parse(JSON.stringify(window.ikmdnState)));
  for (const step of plan) {
    const current = await state();
    if (!current.model || current.model.name !== step.model) {
      await page.selectOption("#model", step.model);
      await page.waitForFunction((name) => window.ikmdnState.model?.name === name || window.ikmdnState.status === "error",
        step.model, { timeout: 60000 });
    }
    await settled();
    let s = await state();
    if (s.status === "error") throw new Error(`the page failed: ${s.error}`);
    if (step.phi_deg !== null && step.phi_deg !== undefined) {
      const before = s.solves;
      await page.evaluate((deg) => {
        const input = document.getElementById("phi");
        input.value = String(deg);
        input.dispatchEvent(new Event("input", { bubbles: true }));
      }, step.phi_deg);
      await page.waitForFunction((n) => window.ikmdnState.solves > n && !window.ikmdnState.busy, before);
    }
    const results = [];
    for (const [x, y] of step.points) {
      s = await state();
      const from = await page.evaluate(([tx, ty]) => window.ikmdnView.worldToClient(tx, ty), s.target);
      const to = await page.evaluate(([tx, ty]) => window.ikmdnView.worldToClient(tx, ty), [x, y]);
      const before = s.solves;
      await page.mouse.move(from.x, from.y);
      await page.mouse.down();
      await page.mouse.move(to.x, to.y, { steps: 12 });
      await page.mouse.up();
      await page.waitForFunction((n) => window.ikmdnState.solves > n && !window.ikmdnState.busy, before, { timeout: 30000 });
      s = await state();
      const landed = await page.evaluate(([cx, cy]) => window.ikmdnView.clientToWorld(cx, cy), [to.x, to.y]);
      results.push({ requested: [x, y], mouse_world: [landed.x, landed.y], state: s });
    }
    out.steps.push({ model: step.model, phi_deg: step.phi_deg ?? null, results });
    const shotPath = typeof step.screenshot === "string" ? step.screenshot : step.screenshot ? screenshotPath : null;
    if (shotPath) {
      await page.mouse.move(5, 5);   // the pointer and the focus ring out of the way
      await page.evaluate(() => document.activeElement?.blur());
      await page.screenshot({ path: shotPath });
    }
  }
} catch (err) {
  out.error = String(err && err.stack ? err.stack : err);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(out.error ? 1 : 0);
