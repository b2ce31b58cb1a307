"""`ikmdn evaluate`: measure a model (and optionally a least-squares baseline) on fresh targets and
write metrics.json, the figures and report.md into one folder.

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
    Answers,
    Evaluation,
    averaging_stats,
    evaluate_solver,
    outer_reach,
    position_coordinates,
)
from ikmdn.outdir import prepare_out_dir

FORMAT = 1
DEFAULT_SAMPLES = 5000
DEFAULT_SEED = 2024  # not the training seed (0), so the test targets are fresh
QUIVER_TARGETS = 300       # arrows per quiver panel
JOINT_PLOT_TARGETS = 1000  # targets whose K candidates are drawn in joint space
WORKSPACE_POINTS = 6_000  # background points showing the workspace
UNIT = "arm length units"

FIGURES = {"quiver": "quiver.png", "error_histogram": "error_histogram.png",
           "joint_candidates": "joint_candidates.png", "error_map": "error_map.png"}
BASELINE_FIGURES = {"baseline_quiver": "baseline_quiver.png", "averaging": "averaging.png"}
METRIC_KEYS = ("format", "ikmdn_version", "definitions", "test_set", "model", "errors", "coverage",
               "solutions_per_target", "reachable", "within_limits", "throughput", "averaging",
               "baseline", "figures")

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
    "radial_margin": "mean of reach - ||hand||: how far inside the outer workspace boundary "
                     "the hand positions lie",
}


def _kind_label(evaluation: Evaluation) -> str:
    m = evaluation.metrics["model"]
    return "least squares" if m["kind"] == "least_squares" else f"MDN (K={m['components']})"


class EvaluationJob:
    """A validated `ikmdn evaluate` run: models loaded, test set chosen, out folder ready.

    Construction raises IKMDNError for bad input (missing model, arms that differ, an out folder
    that holds files without force, samples <= 0) before anything is computed; run() does the work.
    """

    def __init__(self, model: str | Path, out_dir: str | Path, samples: int = DEFAULT_SAMPLES,
                 seed: int = DEFAULT_SEED, baseline: str | Path | None = None,
                 force: bool = False, threads: int | None = None):
        from ikmdn.solve import IKSolver

        if not isinstance(samples, numbers.Integral) or samples <= 0:
            raise IKMDNError(f"number of test targets (--samples) must be a positive integer, "
                             f"got {samples!r}")
        self.model_path, self.baseline_path = Path(model), baseline and Path(baseline)
        self.solver = IKSolver.load(model, threads=threads)
        self.baseline = IKSolver.load(baseline, threads=threads) if baseline else None
        if self.baseline and self.baseline.arm.spec() != self.solver.arm.spec():
            raise IKMDNError(f"the baseline {baseline} is for arm {self.baseline.arm.name!r}, the "
                             f"model {model} for arm {self.solver.arm.name!r}; they must match")
        self.samples, self.seed = int(samples), seed
        self.out = prepare_out_dir(out_dir, force)

    @property
    def steps(self) -> list[str]:
        """Labels of the steps run() reports, in order (for a progress bar)."""
        solving = ["solving (model)"] + (["solving (baseline)"] if self.baseline else [])
        figures = [*FIGURES, *(BASELINE_FIGURES if self.baseline else ())]
        return [*solving, *figures, "report.md"]

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
        figures = {**FIGURES, **(BASELINE_FIGURES if base else {})}
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
        names = [n for n, ang in zip(arm.target_names, arm.angular_targets, strict=True) if not ang]
        self.axis_names = tuple(names[:2])
        self.view = " (top view)" if len(names) > 2 or arm.pose_targets else ""
        self.workspace = self.xy(arm.fk(arm.sample_joints(WORKSPACE_POINTS,
                                                          np.random.default_rng(seed + 1))))
        self.model_label = _kind_label(model)

    def xy(self, points: np.ndarray) -> np.ndarray:
        """The first two length coordinates (N, 2) of targets or hand positions (N, target_dim)."""
        return position_coordinates(self.arm, points)[:, :2]

    def rms_label(self, evaluation: Evaluation, method: str) -> str:
        return f"RMS error {evaluation.metrics['errors'][method]['rms']:.2e}"

    def write(self):
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
        if self.base is None:
            return
        b = self.base
        base_label = _kind_label(b)
        plots.plot_quiver(
            [(f"{base_label}: {self.rms_label(b, 'best_mode')}", t,
              self.xy(b.answers["best_mode"].reached[:n])),
             (f"{self.model_label}, best mode, unrefined: {self.rms_label(m, 'best_mode')}", t,
              self.xy(m.answers["best_mode"].reached[:n]))],
            self.out / BASELINE_FIGURES["baseline_quiver"],
            f"Bishop's Fig. 15 on arm {arm.name}{self.view}: {base_label} vs {self.model_label} "
            "(one arrow scale)",
            self.axis_names, UNIT, self.workspace)
        yield "baseline_quiver"
        answers = {"true joints of the targets": (self.truth, self.targets),
                   base_label: (b.answers["best_mode"].joints, b.answers["best_mode"].reached),
                   f"{self.model_label} best mode": (m.answers["best_mode"].joints,
                                                     m.answers["best_mode"].reached)}
        plots.plot_averaging(
            {k: q for k, (q, _) in answers.items()},
            {k: np.linalg.norm(position_coordinates(arm, x), axis=1) for k, (_, x) in answers.items()},
            self.reach, self.out / BASELINE_FIGURES["averaging"],
            f"Least squares averages the solution branches (arm {arm.name}, "
            f"{len(self.targets)} targets)", UNIT)
        yield "averaging"


# -- report.md ---------------------------------------------------------------------------------

def _e(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2e}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _error_rows(label: str, errors: dict, orientation: bool) -> list[str]:
    def extra(s):
        return f" {_e(s['position_rms'])} | {s['orientation_rms_deg']:.3g} |" if orientation else ""

    return [f"| {label} | {METHOD_LABELS[k]} | {_e(s['rms'])} | {_e(s['p50'])} | {_e(s['p90'])} | "
            f"{_e(s['p99'])} | {_e(s['max'])} | {_e(s['post_mse'])} |{extra(s)}"
            for k, s in errors.items()]


def _model_name(model: dict) -> str:
    return "least squares" if model["kind"] == "least_squares" else f"MDN (K={model['components']})"


def markdown_report(metrics: dict[str, Any]) -> str:
    """report.md: one page with the tables and the figures (relative links)."""
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
