"""`ikmdn evaluate`: measure a model (and optionally a least-squares baseline) on fresh targets and
write metrics.json, the figures and report.md into one folder.

Planar arms get Bishop-style figures (quiver, error map, joint-space candidates); spatial arms
(lengths in metres) get position (mm) and rotation (degree) error histograms, a per-branch coverage
chart where a closed form exists and top and side views of the position errors.

numpy and onnxruntime only: torch is imported only when a model is a training checkpoint.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ikmdn import __version__
from ikmdn.arms.closed_form import closed_form_ik, has_closed_form
from ikmdn.data import make_ik_dataset
from ikmdn.errors import IKMDNError
from ikmdn.evaluate import (
    METHOD_LABELS,
    METHODS,
    POSE_METHODS,
    Answers,
    Evaluation,
    averaging_stats,
    evaluate_solver,
    in_metres,
    outer_reach,
    position_coordinates,
)
from ikmdn.outdir import prepare_out_dir

FORMAT = 1
DEFAULT_SAMPLES = 5000
# Limits on --samples, checked before anything is allocated: the evaluation holds every target's
# K candidates several times over (mixture, unrefined and refined solutions, answers per method).
# Peak memory measured per target: bishop (K=2, 2 joints) ~2.5 KB, ur5 (K=32, 6 joints) ~57 KB;
# evaluation_bytes() is a slight overestimate of both.
MAX_SAMPLES = 10_000_000
MAX_MEMORY = 8 * 2**30
BYTES_PER_TARGET = 2048
BYTES_PER_CANDIDATE_JOINT = 320
DEFAULT_SEED = 2024  # not the training seed (0), so the test targets are fresh
QUIVER_TARGETS = 300       # arrows per quiver panel
JOINT_PLOT_TARGETS = 1000  # targets whose K candidates are drawn in joint space
WORKSPACE_POINTS = 6_000  # background points showing the workspace
UNIT = "arm length units"

# Planar arms (Bishop's figures) ...
FIGURES = {"quiver": "quiver.png", "error_histogram": "error_histogram.png",
           "joint_candidates": "joint_candidates.png", "error_map": "error_map.png"}
# ... and spatial arms: rotation errors for pose targets only, branch coverage where a closed
# form exists (see figures_for).
SPATIAL_FIGURES = {"position_errors": "position_errors.png", "rotation_errors": "rotation_errors.png",
                   "branch_coverage": "branch_coverage.png", "position_quiver": "position_quiver.png"}
BASELINE_FIGURES = {"baseline_quiver": "baseline_quiver.png", "averaging": "averaging.png"}
METRIC_KEYS = ("format", "ikmdn_version", "definitions", "test_set", "model", "errors", "coverage",
               "solutions_per_target", "solutions_per_target_counts", "reachable", "fallback",
               "within_limits", "throughput", "averaging", "baseline", "figures")

DEFINITIONS = {
    "error": "Euclidean end-effector error ||fk(q) - x|| in the arm's length unit (angles "
             "compared modulo 2 pi); for pose targets the hand position distance",
    "rms": "sqrt(mean(error^2)) over the test targets (Bishop's measure)",
    "post_mse": "the blog post's printed 'RMSE': mean over targets and coordinates of "
                "(fk(q) - x)^2 = rms^2 / d (d error coordinates, 2 on a planar arm); a mean "
                "squared error, not an RMS distance",
    "best_mode": "the unrefined mean of the heaviest mixture component",
    "min_over_modes": "the unrefined component mean closest to the target (the best of K)",
    "sampled": "a component drawn by weight, then joints drawn from its Gaussian (the post's "
               "method)",
    "refined": "the answer after refinement: the heaviest in-limit candidate within 1e-6 of "
               "its target, else the closest",
    "coverage": "share of the closed-form in-limit solutions matched by a refined candidate "
                "within 1e-6 rad",
    "per_branch": "coverage of branch b of the closed form: the share of the targets where "
                  "branch b exists (reachable, in limits, not a duplicate of an earlier branch) "
                  "whose branch-b solution a refined candidate matches within 1e-6 rad (angles "
                  "modulo 2 pi)",
    "position_mm": "spatial arms: hand position distance ||p(q) - p_target|| in mm (spread: RMS, "
                   "percentiles, max)",
    "rotation_deg": "pose targets: the angle of the rotation between the reached and the target "
                    "hand orientation, in degrees; for min_over_modes the minimum over the modes "
                    "taken on its own (it may come from another mode than the position minimum)",
    "reachable": "share of the targets solved: some distinct in-limit refined candidate within "
                 "reach_tol in position (and in rotation, rad, for pose targets)",
    "fallback": "share of the targets no mixture mode solved whose answer came from the solver's "
                "extra seeds (Solutions.fallback)",
    "radial_margin": "mean of reach - ||hand||: how far inside the outer workspace boundary "
                     "the hand positions lie",
}


def figures_for(arm, baseline: bool = False) -> dict[str, str]:
    """The figures (name -> file) an evaluation of arm writes, in order."""
    if not in_metres(arm):
        figures = dict(FIGURES)
    else:
        skip = {"rotation_errors"} if not arm.pose_targets else set()
        if not has_closed_form(arm):
            skip.add("branch_coverage")
        figures = {k: v for k, v in SPATIAL_FIGURES.items() if k not in skip}
    return {**figures, **(BASELINE_FIGURES if baseline else {})}


def evaluation_bytes(samples: int, solvers) -> int:
    """Estimated peak memory (bytes) of evaluating solvers (IKSolvers) on samples targets."""
    return samples * sum(BYTES_PER_TARGET + BYTES_PER_CANDIDATE_JOINT * s.model.components * s.arm.dof
                         for s in solvers)


class EvaluationJob:
    """A validated `ikmdn evaluate` run: models loaded, test set chosen, out folder ready.

    Construction raises IKMDNError for bad input (missing model, arms that differ, an out folder
    that holds files without force, samples <= 0) before anything is computed; run() does the work.
    """

    def __init__(self, model: str | Path, out_dir: str | Path, samples: int = DEFAULT_SAMPLES,
                 seed: int = DEFAULT_SEED, baseline: str | Path | None = None,
                 force: bool = False, threads: int | None = None):
        from ikmdn.solve import IKSolver

        if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples <= 0:
            raise IKMDNError(f"number of test targets (--samples) must be a positive integer, "
                             f"got {str(samples)[:40]}")
        if samples > MAX_SAMPLES:
            raise IKMDNError(f"number of test targets (--samples) must be at most {MAX_SAMPLES:,}, "
                             f"got {int(samples):,}")
        self.model_path, self.baseline_path = Path(model), baseline and Path(baseline)
        self.solver = IKSolver.load(model, threads=threads)
        self.baseline = IKSolver.load(baseline, threads=threads) if baseline else None
        if self.baseline and self.baseline.arm.spec() != self.solver.arm.spec():
            raise IKMDNError(f"the baseline {baseline} is for arm {self.baseline.arm.name!r}, the "
                             f"model {model} for arm {self.solver.arm.name!r}; they must match")
        solvers = [self.solver] + ([self.baseline] if self.baseline else [])
        needed = evaluation_bytes(int(samples), solvers)
        if needed > MAX_MEMORY:
            most = MAX_MEMORY // evaluation_bytes(1, solvers)
            raise IKMDNError(f"--samples {int(samples):,} would need about {needed / 2**30:,.1f} GiB "
                             f"of memory with this model (K={self.solver.model.components}, "
                             f"{self.solver.arm.dof} joints); the limit is "
                             f"{MAX_MEMORY / 2**30:.0f} GiB: use at most {most:,} targets")
        self.samples, self.seed = int(samples), seed
        self.out = prepare_out_dir(out_dir, force)

    @property
    def steps(self) -> list[str]:
        """Labels of the steps run() reports, in order (for a progress bar)."""
        solving = ["solving (model)"] + (["solving (baseline)"] if self.baseline else [])
        return [*solving, *figures_for(self.solver.arm, bool(self.baseline)), "report.md"]

    def run(self, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Evaluate, write metrics.json, the figures and report.md; return the metrics.

        on_step(label) is called after each step of `steps`.
        """
        step = on_step or (lambda label: None)
        arm = self.solver.arm
        test = make_ik_dataset(arm, self.samples, self.seed)
        targets, truth = test.inputs, test.outputs
        model = evaluate_solver(self.solver, targets, self.seed)
        step(self.steps[0])
        base = None
        if self.baseline:
            base = evaluate_solver(self.baseline, targets, self.seed)
            step(self.steps[1])
        reach = outer_reach(arm, seed=self.seed)
        metrics = self._metrics(model, base, truth, reach)
        figure_steps = _Figures(arm, targets, truth, model, base, reach,
                                self.out, self.seed).write()
        for label in figure_steps:
            step(label)
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (self.out / "report.md").write_text(markdown_report(metrics))
        step("report.md")
        return metrics

    def _metrics(self, model: Evaluation, base: Evaluation | None, truth: np.ndarray,
                 reach: float) -> dict[str, Any]:
        arm = self.solver.arm
        targets = model.targets
        truth_answers = Answers.of(arm, truth, targets)
        averaging = {"reach": reach,
                     "true_joints": averaging_stats(arm, targets, truth_answers, reach),
                     "model_best_mode": averaging_stats(arm, targets, model.answers["best_mode"], reach),
                     "baseline": base and averaging_stats(arm, targets, base.answers["best_mode"], reach)}
        figures = figures_for(arm, base is not None)
        return {
            "format": FORMAT, "ikmdn_version": __version__, "definitions": DEFINITIONS,
            "test_set": {"targets": self.samples, "seed": self.seed,
                         "arm": arm.spec(), "model_path": str(self.model_path),
                         "baseline_path": self.baseline_path and str(self.baseline_path),
                         "made_by": "fk of joints drawn uniformly within the limits"},
            **model.metrics, "averaging": averaging,
            "baseline": base and base.metrics,
            "figures": figures,
        }


class _Figures:
    """The evaluation's PNG files; write() yields each figure's name as it is written."""

    def __init__(self, arm, targets, truth, model: Evaluation, base: Evaluation | None,
                 reach: float, out: Path, seed: int):
        self.arm, self.targets, self.truth = arm, targets, truth
        self.model, self.base, self.reach, self.out = model, base, reach, out
        self.spatial = in_metres(arm)
        self.unit = "m" if self.spatial else UNIT
        names = [n for n, ang in zip(arm.target_names, arm.angular_targets, strict=True) if not ang]
        self.axis_names = tuple(names[:2])
        self.position_names = tuple(names[:3])
        self.view = " (top view)" if len(names) > 2 or arm.pose_targets else ""
        hands = arm.fk(arm.sample_joints(WORKSPACE_POINTS, np.random.default_rng(seed + 1)))
        self.workspace3 = position_coordinates(arm, hands)
        self.workspace = self.workspace3[:, :2]
        self.model_label = _model_name(model.metrics["model"])
        self.files = figures_for(arm, base is not None)

    def xy(self, points: np.ndarray) -> np.ndarray:
        """The first two length coordinates (N, 2) of targets or hand positions (N, target_dim)."""
        return position_coordinates(self.arm, points)[:, :2]

    def rms_label(self, evaluation: Evaluation, method: str) -> str:
        stats = evaluation.metrics["errors"][method]
        if self.spatial:
            return f"position RMS {_num(stats['position_mm']['rms'])} mm"
        return f"RMS error {stats['rms']:.2e}"

    def write(self):
        yield from (self._spatial() if self.spatial else self._planar())
        if self.base is not None:
            yield from self._baseline()

    def _planar(self):
        from ikmdn import plots

        m, arm, n = self.model, self.arm, QUIVER_TARGETS
        t = self.xy(self.targets[:n])
        plots.plot_quiver(
            [(f"{self.model_label}, best mode, unrefined: {self.rms_label(m, 'best_mode')}", t,
              self.xy(m.answers["best_mode"].reached[:n])),
             (f"{self.model_label}, refined: {self.rms_label(m, 'refined')}", t,
              self.xy(m.answers["refined"].reached[:n]))],
            self.out / FIGURES["quiver"], f"Target -> reached hand position, arm {arm.name}"
            f"{self.view} ({min(n, len(self.targets))} of {len(self.targets)} test targets)",
            self.axis_names, UNIT, self.workspace)
        yield "quiver"
        plots.plot_error_histogram(
            {METHOD_LABELS[k]: m.answers[k].errors for k in METHODS},
            self.out / FIGURES["error_histogram"],
            f"Errors of {self.model_label} on arm {arm.name} ({len(self.targets)} targets)", UNIT)
        yield "error_histogram"
        j = JOINT_PLOT_TARGETS
        branches = valid = None
        if has_closed_form(arm):
            branches, valid = closed_form_ik(arm, self.targets[:j])
        plots.plot_joint_candidates(
            arm.wrap_joints(m.mixture.means[:j]), m.mixture.weights[:j], arm.joint_limits,
            self.out / FIGURES["joint_candidates"],
            f"All {m.mixture.components} mixture means for {min(j, len(self.targets))} targets, "
            f"arm {arm.name}", branches, valid)
        yield "joint_candidates"
        plots.plot_error_map(
            self.xy(self.targets),
            [(f"best mode, unrefined: {self.rms_label(m, 'best_mode')}", m.answers["best_mode"].errors),
             (f"refined (stops at {m.metrics['model']['refine_tol']:.0e}): "
              f"{self.rms_label(m, 'refined')}", m.answers["refined"].errors)],
            self.out / FIGURES["error_map"], f"Test targets coloured by error, {self.model_label}, "
            f"arm {arm.name}{self.view}", self.axis_names, UNIT, self.workspace)
        yield "error_map"

    def _spatial(self):
        from ikmdn import plots

        m, arm, n = self.model, self.arm, len(self.targets)
        labels = {k: METHOD_LABELS[k] for k in POSE_METHODS}
        plots.plot_error_histogram(
            {labels[k]: 1000.0 * m.pose_errors[k]["position"] for k in POSE_METHODS},
            self.out / self.files["position_errors"],
            f"Hand position errors of {self.model_label}, arm {arm.name} ({n} targets)",
            xlabel="hand position error ||p(q) - p_target|| (mm)", value_unit="mm")
        yield "position_errors"
        if "rotation_errors" in self.files:
            plots.plot_error_histogram(
                {labels[k]: np.degrees(m.pose_errors[k]["rotation"]) for k in POSE_METHODS},
                self.out / self.files["rotation_errors"],
                f"Hand rotation errors of {self.model_label}, arm {arm.name} ({n} targets)",
                xlabel="hand rotation error: angle between reached and target orientation "
                       "(degrees)", value_unit="deg")
            yield "rotation_errors"
        if "branch_coverage" in self.files:
            cov = m.metrics["coverage"]
            rows = cov["per_branch"]
            plots.plot_branch_coverage(
                [r["label"] for r in rows], [r["valid"] for r in rows], [r["matched"] for r in rows],
                cov["coverage"], self.out / self.files["branch_coverage"],
                f"Closed-form branches found by {self.model_label} (refined), arm {arm.name}, "
                f"{n} targets")
            yield "branch_coverage"
        q = QUIVER_TARGETS
        t = self.workspace_of(self.targets[:q])
        plots.plot_quiver_views(
            [(f"{self.model_label}, {METHOD_LABELS[k]}: {self.rms_label(m, k)}", t,
              self.workspace_of(m.answers[k].reached[:q])) for k in ("best_mode", "min_over_modes")],
            self.out / self.files["position_quiver"],
            f"Target -> reached hand position, arm {arm.name} ({min(q, n)} of {n} test targets)",
            axis_names=self.position_names, workspace=self.workspace3)
        yield "position_quiver"

    def workspace_of(self, points: np.ndarray) -> np.ndarray:
        """Hand positions (N, 3) of spatial targets or reached points (N, target_dim)."""
        return position_coordinates(self.arm, points)

    def _baseline(self):
        from ikmdn import plots

        m, b, arm, n = self.model, self.base, self.arm, QUIVER_TARGETS
        base_label = _model_name(b.metrics["model"])
        title = (f"Bishop's Fig. 15 on arm {arm.name}{'' if self.spatial else self.view}: "
                 f"{base_label} vs {self.model_label} (one arrow scale)")
        project = self.workspace_of if self.spatial else self.xy
        t = project(self.targets[:n])
        panels = [(f"{base_label}: {self.rms_label(b, 'best_mode')}", t,
                   project(b.answers["best_mode"].reached[:n])),
                  (f"{self.model_label}, best mode, unrefined: {self.rms_label(m, 'best_mode')}", t,
                   project(m.answers["best_mode"].reached[:n]))]
        path = self.out / BASELINE_FIGURES["baseline_quiver"]
        if self.spatial:
            plots.plot_quiver_views(panels, path, title, axis_names=self.position_names,
                                    workspace=self.workspace3)
        else:
            plots.plot_quiver(panels, path, title, self.axis_names, UNIT, self.workspace)
        yield "baseline_quiver"
        answers = {"true joints of the targets": (self.truth, self.targets),
                   base_label: (b.answers["best_mode"].joints, b.answers["best_mode"].reached),
                   f"{self.model_label} best mode": (m.answers["best_mode"].joints,
                                                     m.answers["best_mode"].reached)}
        plots.plot_averaging(
            {k: arm.wrap_joints(q) for k, (q, _) in answers.items()},  # full-circle joints wrapped
            {k: np.linalg.norm(position_coordinates(arm, x), axis=1) for k, (_, x) in answers.items()},
            self.reach, self.out / BASELINE_FIGURES["averaging"],
            f"Least squares averages the solution branches (arm {arm.name}, "
            f"{len(self.targets)} targets)", self.unit)
        yield "averaging"


# -- report.md ---------------------------------------------------------------------------------

def _e(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2e}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _tol(value: float) -> str:
    """A tolerance as 1e-6 rather than 1e-06."""
    return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _num(value: float | None) -> str:
    """3 significant digits, in e-notation outside [0.01, 1e5) (mm and degree tables)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == 0 or 0.01 <= abs(value) < 1e5:
        return f"{value:.3g}"
    return f"{value:.2e}"


def _error_rows(label: str, errors: dict, orientation: bool) -> list[str]:
    def extra(s):
        return f" {_e(s['position_rms'])} | {s['orientation_rms_deg']:.3g} |" if orientation else ""

    return [f"| {label} | {METHOD_LABELS[k]} | {_e(s['rms'])} | {_e(s['p50'])} | {_e(s['p90'])} | "
            f"{_e(s['p99'])} | {_e(s['max'])} | {_e(s['post_mse'])} |{extra(s)}"
            for k, s in errors.items()]


def _model_name(model: dict) -> str:
    """least squares, MDN (K=8) or autoregressive (beam 32)."""
    if model["kind"] == "least_squares":
        return "least squares"
    if model["kind"] == "autoregressive":
        return f"autoregressive (beam {model['components']})"
    return f"MDN (K={model['components']})"


def markdown_report(metrics: dict[str, Any]) -> str:
    """report.md: one page with the tables and the figures (relative links); its sections follow
    the arm: planar (Bishop's figures) or spatial (position and rotation errors, branches)."""
    if "position_mm" in metrics["errors"]["refined"]:
        return _spatial_report(metrics)
    test, model = metrics["test_set"], metrics["model"]
    arm = test["arm"]
    base = metrics["baseline"]
    name = _model_name(model)
    orientation = "orientation_rms_deg" in metrics["errors"]["refined"]
    lines = [f"# Evaluation of `{Path(test['model_path']).name}`", "",
             f"Arm **{arm['name']}** ({arm['dof']} joints), {name}, on {test['targets']:,} fresh "
             f"targets (forward kinematics of joints drawn uniformly within the limits, seed "
             f"{test['seed']}). Errors are Euclidean end-effector distances ||fk(q) - x|| in the "
             f"arm's length unit; ikmdn {metrics['ikmdn_version']}.", "",
             "## Accuracy", "",
             "| model | answer | RMS error | p50 | p90 | p99 | max | post MSE |"
             + (" position RMS | orientation RMS (deg) |" if orientation else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if orientation else ""),
             *_error_rows(name, metrics["errors"], orientation)]
    if base:
        lines += _error_rows(_model_name(base["model"]), base["errors"], orientation)
    cov, thr, lim = metrics["coverage"], metrics["throughput"], metrics["within_limits"]
    lines += ["", "RMS error = sqrt(mean(error^2)) (Bishop's measure). *post MSE* = mean over "
              "targets and coordinates of (fk(q) - x)^2, what the blog post printed as "
              "\"RMSE\" (= RMS^2 / d over the d error coordinates; d = 2 on a planar arm)."
              + (" For pose targets the error is the hand position distance; the orientation "
                 "error is reported on its own." if orientation else ""), "",
              "## Solutions and speed", "",
              "| coverage of closed-form solutions | distinct solutions per target | targets "
              "solved | raw modes within limits | refined candidates within limits |",
              "|---|---|---|---|---|",
              f"| {_pct(cov and cov['coverage'])} | {metrics['solutions_per_target']:.3f} | "
              f"{_pct(metrics['reachable'])} | {_pct(lim['unrefined_modes'])} | "
              f"{_pct(lim['refined_candidates'])} |", "",
              *_branch_table(cov),
              "| refined solve (targets/s) | unrefined solve (targets/s) | closed form (targets/s) "
              "| refined / closed form |",
              "|---|---|---|---|",
              f"| {_rate(thr['refined_targets_per_s'])} | {_rate(thr['unrefined_targets_per_s'])} | "
              f"{_rate(thr.get('closed_form_targets_per_s'))} | "
              f"{_e(thr.get('refined_over_closed_form'))} |", "",
              "Throughput: one timed pass over the test targets after a warm-up, on the machine "
              "that wrote this report; the closed form is the speed of light for a two-link arm.",
              "", "## Figures", "",
              "![quiver plot](quiver.png)", "",
              "Bishop's Fig. 15: an arrow from each target to where the predicted joints put the "
              "hand (left: heaviest mode, unrefined; right: after refinement).", "",
              "![error histogram](error_histogram.png)", "",
              "![joint-space candidates](joint_candidates.png)", "",
              "![error map](error_map.png)", ""]
    if base:
        lines += _averaging_section(metrics)
    return "\n".join(lines) + "\n"


def _branch_table(cov: dict | None) -> list[str]:
    """Per-branch coverage: a table and the branch order's description (no lines without one)."""
    if not cov or not cov.get("per_branch"):
        return []
    rows = [f"| {r['branch']} | {r['label']} | {r['valid']:,} | {r['matched']:,} | "
            f"{_pct(r['coverage'])} |" for r in cov["per_branch"]]
    return ["| branch | description | targets where it exists | found (refined) | coverage |",
            "|---|---|---|---|---|", *rows, "",
            f"Branch order (of the closed-form oracle): {cov['branch_order']}", ""]


def _spread_rows(errors: dict, key: str, methods=METHODS) -> list[str]:
    return [f"| {METHOD_LABELS[m]} | " + " | ".join(_num(errors[m][key][s]) for s in SPREAD)
            + " |" for m in methods]


SPREAD = ("rms", "p50", "p90", "p99", "max")
SPREAD_HEADER = "| RMS | p50 | p90 | p99 | max |"


def _spatial_report(metrics: dict[str, Any]) -> str:
    """report.md for a spatial arm (lengths in metres): errors in mm and degrees, branches."""
    test, model = metrics["test_set"], metrics["model"]
    arm, base = test["arm"], metrics["baseline"]
    pose = "rotation_deg" in metrics["errors"]["refined"]
    name = _model_name(model)
    what = ("pose targets: hand position and orientation" if pose
            else "position targets: hand position only")
    tol = model["reach_tol"]
    lines = [f"# Evaluation of `{Path(test['model_path']).name}`", "",
             f"Arm **{arm['name']}** ({arm['dof']} joints, {what}), {name}, on "
             f"{test['targets']:,} fresh targets (forward kinematics of joints drawn uniformly "
             f"within the limits, seed {test['seed']}); ikmdn {metrics['ikmdn_version']}.", "",
             "Position error: the distance between the reached and the target hand position, in "
             "mm." + (" Rotation error: the angle of the rotation between the reached and the "
                      "target hand orientation, in degrees." if pose else ""), "",
             "## Accuracy", "", "### Position error (mm)", "",
             "| answer " + SPREAD_HEADER, "|---" * 6 + "|",
             *_spread_rows(metrics["errors"], "position_mm")]
    if base:
        lines += [f"| {_model_name(base['model'])}, {METHOD_LABELS['best_mode']} | "
                  + " | ".join(_num(base["errors"]["best_mode"]["position_mm"][s]) for s in SPREAD)
                  + " |"]
    if pose:
        lines += ["", "### Rotation error (degrees)", "", "| answer " + SPREAD_HEADER,
                  "|---" * 6 + "|", *_spread_rows(metrics["errors"], "rotation_deg")]
        if base:
            lines += [f"| {_model_name(base['model'])}, {METHOD_LABELS['best_mode']} | "
                      + " | ".join(_num(base["errors"]["best_mode"]["rotation_deg"][s])
                                   for s in SPREAD) + " |"]
    lines += ["", "RMS = sqrt(mean(error^2)) over the targets. *Best mode*: the mean of the "
              "heaviest mixture component, unrefined. *Min over modes*: the best of the K means "
              "for each target (an oracle pick, a lower bound for any unrefined pick)"
              + ("; the position and the rotation minimum are each taken on their own, so they "
                 "may come from different modes" if pose else "")
              + ". *Sampled*: a component drawn by weight, then joints drawn from its Gaussian. "
              f"*Refined*: the heaviest in-limit candidate within {_tol(tol)} m"
              + (f" and {_tol(tol)} rad" if pose else "") + " after refinement, else the closest.",
              ""]
    cov, thr, lim = metrics["coverage"], metrics["throughput"], metrics["within_limits"]
    counts = metrics["solutions_per_target_counts"]
    solved_within = f"{_tol(tol)} m" + (f" and {_tol(tol)} rad" if pose else "")
    lines += ["## Solutions", "",
              f"| targets solved (within {solved_within}) | answers from fallback seeds | "
              "distinct solutions per target | raw modes within limits | refined candidates "
              "within limits |", "|---|---|---|---|---|",
              f"| {_pct(metrics['reachable'])} | {_pct(metrics['fallback'])} | "
              f"{metrics['solutions_per_target']:.3f} | {_pct(lim['unrefined_modes'])} | "
              f"{_pct(lim['refined_candidates'])} |", "",
              "*Solved*: some distinct in-limit refined candidate reaches the target within the "
              "tolerance. *Fallback*: no mixture mode converged, and the answer came from the "
              "solver's extra seeds (around the modes and uniform within the limits). *Distinct "
              "solutions*: refined candidates that solve the target and differ by more than "
              "1e-6 rad in some joint (modulo 2 pi).", "",
              "| distinct solutions | " + " | ".join(str(c) for c in range(len(counts))) + " |",
              "|---" * (len(counts) + 1) + "|",
              "| targets | " + " | ".join(f"{c:,}" for c in counts) + " |", ""]
    if cov:
        lines += ["### Coverage of the closed-form solutions", "",
                  f"The refined candidates match **{_pct(cov['coverage'])}** of the "
                  f"{cov['branches']:,} in-limit closed-form solutions of the test targets (within "
                  f"1e-6 rad in every joint, modulo 2 pi); every solution of a target is found for "
                  f"{_pct(cov['targets_fully_covered'])} of the targets. Per branch:", "",
                  *_branch_table(cov)]
    else:
        lines += [f"Arm {arm['name']} has no closed-form IK oracle, so coverage of its solutions "
                  "is not measured" + (" (with 7 joints it has a continuum of solutions)"
                                       if arm["dof"] > 6 else "") + ".", ""]
    lines += ["## Speed", "",
              "| refined solve (targets/s) | unrefined solve (targets/s) | closed form (targets/s) "
              "| refined / closed form |", "|---|---|---|---|",
              f"| {_rate(thr['refined_targets_per_s'])} | {_rate(thr['unrefined_targets_per_s'])} | "
              f"{_rate(thr.get('closed_form_targets_per_s'))} | "
              f"{_e(thr.get('refined_over_closed_form'))} |", "",
              "Throughput: one timed pass over the test targets after a warm-up, on the machine "
              "that wrote this report" + ("; the closed-form oracle is the reference speed."
                                          if cov else "."), "",
              "## Figures", ""]
    figures = metrics["figures"]
    captions = {
        "position_errors": "Hand position errors (mm, log scale) of the unrefined best mode, the "
                           "best of the K unrefined modes, and the refined answer.",
        "rotation_errors": "Hand rotation errors (degrees, log scale), the same three answers.",
        "branch_coverage": "For each closed-form branch, the share of the targets where the branch "
                           "exists whose branch solution a refined candidate found (counts on "
                           "the bars).",
        "position_quiver": "An arrow from each target to where the unrefined joints put the hand, "
                           "seen from above (x, y) and from the side (x, z); one arrow scale.",
    }
    for key, caption in captions.items():
        if key in figures:
            lines += [f"![{key.replace('_', ' ')}]({figures[key]})", "", caption, ""]
    if base:
        lines += _averaging_section(metrics)
    return "\n".join(lines) + "\n"


def _averaging_section(metrics: dict[str, Any]) -> list[str]:
    av = metrics["averaging"]
    columns = [("test targets (true joints)", av["true_joints"]),
               (_model_name(metrics["baseline"]["model"]), av["baseline"]),
               (f"{_model_name(metrics['model'])} best mode", av["model_best_mode"])]
    dof = len(av["true_joints"]["joint_mean"])

    def row(label, fmt, get):
        return f"| {label} | " + " | ".join(fmt(get(s)) for _, s in columns) + " |"

    def num(v):
        return "n/a" if v is None else f"{v:.3f}"

    def joint(j):
        return lambda s: s["midpoint_gap"] and s["midpoint_gap"][j]

    rows = [row(f"mean theta{j + 1} (rad)", num, lambda s, j=j: s["joint_mean"][j]) for j in range(dof)]
    rows += [row(f"spread (std) of theta{j + 1} (rad)", num, lambda s, j=j: s["joint_std"][j])
             for j in range(dof)]
    rows += [row(f"mean abs(theta{j + 1} - midpoint of the two branches) (rad)", num, joint(j))
             for j in range(dof)]
    rows += [row("mean joint-space distance to the nearest closed-form solution (rad)", num,
                 lambda s: s["to_nearest_branch"]),
             row(f"mean distance of the hand inside the outer boundary (reach {av['reach']:.3f})",
                 num, lambda s: s["radial_margin"]),
             row("the same, over the targets with two solutions", num,
                 lambda s: s["radial_margin_two_branch"])]
    base = metrics["baseline"]["errors"]
    mdn = metrics["errors"]
    return ["## Least squares vs MDN: Bishop's averaging effect", "",
            f"RMS error, least squares {_e(base['best_mode']['rms'])} unrefined, "
            f"{_e(base['refined']['rms'])} refined; MDN best mode {_e(mdn['best_mode']['rms'])} "
            f"unrefined, {_e(mdn['refined']['rms'])} refined.", "",
            "A least-squares network learns the conditional mean of the joints: where a target has "
            "two solutions (elbow up and elbow down) it answers their average, which straightens "
            "the elbow and puts the hand further out than the target, towards the outer edge of "
            "the workspace (Bishop 1994, Fig. 15).", "",
            "| quantity | " + " | ".join(c for c, _ in columns) + " |",
            "|---|" + "---|" * len(columns), *rows, "",
            "Midpoint rows: over the targets with exactly two in-limit closed-form solutions "
            f"({av['true_joints']['two_branch_targets']:,}); on Bishop's arm their midpoint is "
            "theta2 = pi, the straight arm, whose hand lies on the outer boundary.", "",
            "![least squares vs MDN quiver](baseline_quiver.png)", "",
            "![averaging effect](averaging.png)", ""]
