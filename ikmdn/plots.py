"""Figures (matplotlib, imported lazily so nothing else pays for it).

Every function takes plain numpy arrays and a path, writes one PNG and closes its figure. Lengths
are in the arm's own unit (`unit`), joint angles in radians.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

DPI = 110
NICE_STEPS = (1.0, 2.0, 5.0)
LOG_FLOOR = 1e-16  # errors below this (exact hits) are drawn at it on log axes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)


def plot_loss_curve(history, path: Path, title: str) -> None:
    """Training loss and validation NLL per epoch (history: records with epoch, train_loss, val_nll)."""
    plt = _pyplot()
    epochs = [r.epoch for r in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    ax.plot(epochs, [r.train_loss for r in history], label="training loss (standardised units)")
    ax.plot(epochs, [r.val_nll for r in history], label="validation NLL (nats, physical units)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats per sample; MSE for least squares)")
    ax.set_title(f"Loss curve: {title}")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


# -- helpers -----------------------------------------------------------------------------------

def nice_below(value: float) -> float:
    """The largest 1, 2 or 5 x 10^k that is <= value (value > 0)."""
    exponent = np.floor(np.log10(value))
    for step in reversed(NICE_STEPS):
        if step * 10**exponent <= value:
            return float(step * 10**exponent)
    return float(10**exponent)


def _format_length(value: float) -> str:
    return f"{value:.0e}" if value < 1e-3 else f"{value:g}"


def _background(ax, workspace: np.ndarray | None) -> None:
    """Light grey points (M, 2) showing the reachable workspace."""
    if workspace is not None:
        ax.scatter(workspace[:, 0], workspace[:, 1], s=3, lw=0, color="0.87", rasterized=True,
                   label="workspace (fk of random joints)", zorder=0)


def _xy_axes(ax, axis_names: tuple[str, str], unit: str) -> None:
    ax.set_xlabel(f"{axis_names[0]} ({unit})")
    ax.set_ylabel(f"{axis_names[1]} ({unit})")
    ax.set_aspect("equal", adjustable="box")
    ax.grid(alpha=0.25)


def _arrow_scale(arrows: list[np.ndarray], points: np.ndarray) -> tuple[float, float]:
    """(magnification, key length) shared by quiver panels: arrows [(M, d)], points (P, d).

    The panel with the largest errors sets the scale: its 90th-percentile arrow is drawn at about
    4% of the plot's width, magnified by a 1-2-5 factor when the errors would be too small to see;
    the key is a 1-2-5 length near the typical arrow.
    """
    lengths = [np.linalg.norm(a, axis=1) for a in arrows]
    span = float(np.ptp(points, axis=0).max()) or 1.0
    typical = max(max(float(np.percentile(e, 90)) for e in lengths), 1e-12 * span)
    magnification = max(1.0, nice_below(0.04 * span / typical))
    key = nice_below(min(max(typical, max(float(e.max()) for e in lengths) / 3),
                         0.15 * span / magnification))
    return magnification, key


def _format_metres(value: float) -> str:
    """A length in metres as a short label in mm (or um below 0.1 mm, or m from 1 m)."""
    if value >= 1.0:
        return f"{value:g} m"
    if value >= 1e-4:
        return f"{value * 1e3:g} mm"
    return f"{value * 1e6:.3g} um"


# -- evaluation figures ------------------------------------------------------------------------

def plot_quiver(panels: list[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str,
                axis_names: tuple[str, str] = ("x", "y"), unit: str = "length units",
                workspace: np.ndarray | None = None) -> float:
    """Bishop's Fig. 15: an arrow from each target to where the predicted joints put the hand.

    panels: (panel title, targets (M, 2), reached (M, 2)); every panel shares one arrow scale,
    magnified by a 1-2-5 factor (stated in the key) when the errors would be too small to see.
    workspace (W, 2): optional background points. Returns the magnification.
    """
    plt = _pyplot()
    magnification, key = _arrow_scale([r - t for _, t, r in panels],
                                      np.concatenate([t for _, t, _ in panels]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 5.4), squeeze=False,
                             sharex=True, sharey=True, constrained_layout=True)
    for ax, (panel_title, targets, reached) in zip(axes[0], panels, strict=True):
        _background(ax, workspace)
        d = reached - targets
        ax.plot(targets[:, 0], targets[:, 1], ".", ms=2.5, color="C0", label="target", zorder=2)
        arrows = ax.quiver(targets[:, 0], targets[:, 1], d[:, 0], d[:, 1], angles="xy",
                           scale_units="xy", scale=1.0 / magnification, width=0.0035,
                           color="C3", zorder=3, label="target -> reached hand position")
        drawn = f", drawn x{magnification:g}" if magnification != 1 else " (true scale)"
        ax.quiverkey(arrows, X=0.05, Y=0.05, U=key, coordinates="axes", labelpos="E",
                     label=f"error {_format_length(key)} {unit}{drawn}")
        ax.set_title(panel_title, fontsize=10)
        _xy_axes(ax, axis_names, unit)
        ax.legend(loc="upper right", fontsize=8, markerscale=2)
    fig.suptitle(title)
    _save(fig, path)
    return magnification


def plot_error_histogram(errors: dict[str, np.ndarray], path: Path, title: str,
                         unit: str = "length units", xlabel: str | None = None,
                         value_unit: str = "") -> None:
    """Histogram of per-target errors (label -> (N,)) on log-spaced bins.

    xlabel: the quantity and unit (default: the end-effector error in `unit`); ", log scale" is
    appended. Errors below LOG_FLOOR (exact hits) are drawn at it, and the legend counts them.
    value_unit: written after the RMS in the legend (e.g. "mm").
    """
    plt = _pyplot()
    clipped = {k: np.maximum(v, LOG_FLOOR) for k, v in errors.items()}
    everything = np.concatenate(list(clipped.values()))
    lo = np.floor(np.log10(everything.min()))
    hi = max(np.ceil(np.log10(everything.max())), lo + 1)
    bins = np.logspace(lo, hi, int(6 * (hi - lo)) + 1)
    fig, ax = plt.subplots(figsize=(7.0, 4.2), constrained_layout=True)
    for i, (label, e) in enumerate(clipped.items()):
        rms = float(np.sqrt(np.mean(np.square(errors[label]))))
        exact = int(np.sum(np.asarray(errors[label]) < LOG_FLOOR))
        note = f", {exact} below {LOG_FLOOR:.0e} drawn at it" if exact else ""
        ax.hist(e, bins=bins, histtype="step", lw=1.6, color=f"C{i}",
                label=f"{label}: RMS {rms:.2e}{' ' + value_unit if value_unit else ''}{note}")
    ax.set_xscale("log")
    ax.set_xlabel(f"{xlabel or f'end-effector error ||fk(q) - x|| ({unit})'}, log scale")
    ax.set_ylabel("number of targets")
    ax.set_title(title)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_joint_candidates(means: np.ndarray, weights: np.ndarray, limits: np.ndarray, path: Path,
                          title: str, branches: np.ndarray | None = None,
                          valid: np.ndarray | None = None) -> None:
    """Every mixture mean (N, K, dof) in the plane of joints 1 and 2, coloured by its weight (N, K).

    limits (dof, 2) rad drawn as a dashed box; branches (N, B, dof) with valid (N, B): the
    closed-form solutions, drawn on top as black crosses.
    """
    plt = _pyplot()
    q = means.reshape(-1, means.shape[-1])
    w = weights.ravel()
    order = np.argsort(w, kind="stable")  # heaviest drawn last, on top
    fig, ax = plt.subplots(figsize=(6.8, 5.4), constrained_layout=True)
    dots = ax.scatter(q[order, 0], q[order, 1], c=w[order], s=7, cmap="viridis", vmin=0, vmax=1,
                      label="mixture means (colour: weight)", zorder=2)
    if branches is not None:
        b = branches[valid]
        ax.scatter(b[:, 0], b[:, 1], marker="x", s=9, lw=0.6, color="k", zorder=3,
                   label="closed-form solutions (oracle)")
    (lo0, hi0), (lo1, hi1) = limits[0], limits[1]
    ax.plot([lo0, hi0, hi0, lo0, lo0], [lo1, lo1, hi1, hi1, lo1], "--", color="C3", lw=1,
            label="joint limits", zorder=1)
    fig.colorbar(dots, ax=ax, label="mixing weight of the component")
    ax.set_xlabel("joint 1, theta1 (rad)")
    ax.set_ylabel("joint 2, theta2 (rad)")
    ax.set_title(title)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    _save(fig, path)


def plot_error_map(targets: np.ndarray, panels: list[tuple[str, np.ndarray]], path: Path,
                   title: str, axis_names: tuple[str, str] = ("x", "y"),
                   unit: str = "length units", workspace: np.ndarray | None = None) -> None:
    """The workspace with each target (N, 2) coloured by its error; panels: (title, errors (N,))."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 5.0), squeeze=False,
                             sharex=True, sharey=True, constrained_layout=True)
    for ax, (panel_title, errors) in zip(axes[0], panels, strict=True):
        _background(ax, workspace)
        e = np.maximum(errors, LOG_FLOOR)
        order = np.argsort(e, kind="stable")  # largest errors on top
        lo, hi = np.percentile(e, 1), e.max()
        dots = ax.scatter(targets[order, 0], targets[order, 1], c=e[order], s=5, cmap="magma_r",
                          norm=LogNorm(vmin=lo, vmax=max(hi, lo * 10)), zorder=2)
        fig.colorbar(dots, ax=ax, label=f"error ||fk(q) - x|| ({unit}, log scale)")
        ax.set_title(panel_title, fontsize=10)
        _xy_axes(ax, axis_names, unit)
        if workspace is not None:
            ax.legend(loc="upper right", fontsize=8, markerscale=4)
    fig.suptitle(title)
    _save(fig, path)


def plot_quiver_views(rows: list[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str,
                      views: tuple[tuple[str, int, int], ...] = (("top view", 0, 1),
                                                                 ("side view", 0, 2)),
                      axis_names: tuple[str, ...] = ("x", "y", "z"),
                      workspace: np.ndarray | None = None) -> float:
    """Position errors of a spatial arm as arrows from each target to the reached hand position,
    projected on two planes: one row per answer, one column per view.

    rows: (row title, targets (M, 3) m, reached (M, 3) m); views: (name, horizontal axis,
    vertical axis) coordinate indices; workspace (W, 3) m: optional background points. All
    panels share one arrow scale (see _arrow_scale). Returns the magnification.
    """
    plt = _pyplot()
    magnification, key = _arrow_scale([r - t for _, t, r in rows],
                                      np.concatenate([t for _, t, _ in rows]))
    fig, axes = plt.subplots(len(rows), len(views), figsize=(5.4 * len(views), 5.0 * len(rows)),
                             squeeze=False, sharex="col", sharey="col", constrained_layout=True)
    for r, (row_title, targets, reached) in enumerate(rows):
        d = reached - targets
        for c, (view, i, j) in enumerate(views):
            ax = axes[r, c]
            _background(ax, None if workspace is None else workspace[:, [i, j]])
            ax.plot(targets[:, i], targets[:, j], ".", ms=2.5, color="C0", label="target",
                    zorder=2)
            arrows = ax.quiver(targets[:, i], targets[:, j], d[:, i], d[:, j], angles="xy",
                               scale_units="xy", scale=1.0 / magnification, width=0.0035,
                               color="C3", zorder=3, label="target -> reached hand position")
            drawn = f", drawn x{magnification:g}" if magnification != 1 else " (true scale)"
            ax.quiverkey(arrows, X=0.05, Y=0.04, U=key, coordinates="axes", labelpos="E",
                         label=f"error {_format_metres(key)}{drawn}")
            ax.set_title(f"{textwrap.fill(row_title, 56)}\n{view} ({axis_names[i]}, "
                         f"{axis_names[j]})", fontsize=10)   # long labels wrap, not overlap
            _xy_axes(ax, (axis_names[i], axis_names[j]), "m")
    # One legend for all panels, below them, so no panel loses data under it.
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=3,
               fontsize=9, markerscale=3)
    fig.suptitle(title)
    _save(fig, path)
    return magnification


def plot_branch_coverage(labels: list[str], valid: list[int], matched: list[int], overall: float,
                         path: Path, title: str) -> None:
    """Per-branch coverage bars: for each closed-form branch b, matched[b] / valid[b] (the share of
    the targets where branch b exists that a refined candidate reaches), with the overall
    coverage (share of all valid branch solutions) as a line; counts written on the bars.
    labels: one per branch, parts separated by ", " (drawn one per line under the bar)."""
    plt = _pyplot()
    b = len(labels)
    share = np.array([m / v if v else 0.0 for m, v in zip(matched, valid, strict=True)])
    fig, ax = plt.subplots(figsize=(max(7.5, 1.4 * b + 1.5), 5.2), constrained_layout=True)
    x = np.arange(b)
    bars = ax.bar(x, 100 * share, color="C0", width=0.65,
                  label="branch found by a refined candidate (within 1e-6 rad)")
    for rect, m, v in zip(bars, matched, valid, strict=True):
        text = f"{m}/{v}" if v else "never\nexists"
        ax.annotate(text, (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                    fontsize=8)
    ax.axhline(100 * overall, color="C3", ls="--", lw=1.2,
               label=f"overall coverage {overall:.1%} (all branch solutions)")
    ax.set_xticks(x, [f"b{i}\n" + label.replace(", ", "\n") for i, label in enumerate(labels)],
                  fontsize=8)
    ax.set_xlabel("closed-form branch (the oracle's order)")
    ax.set_ylabel("targets with the branch found (%)")
    ax.set_ylim(0, 135)
    ax.set_yticks(np.arange(0, 101, 20))
    ax.set_title(title)
    ax.grid(alpha=0.25, axis="y")
    ax.legend(fontsize=8, loc="upper left", ncol=2 if b > 5 else 1)
    _save(fig, path)


def _log_if_spiky(ax, counts: list[np.ndarray]) -> None:
    """Histogram y axis: log scale when the tallest bin dwarfs the typical one (a spike that
    would flatten everything else), linear otherwise; labelled either way."""
    values = np.concatenate(counts)
    typical = np.median(values[values > 0]) if (values > 0).any() else 1.0
    spiky = values.max() > 8 * typical
    if spiky:
        ax.set_yscale("log")
    ax.set_ylabel("number of targets" + (" (log scale)" if spiky else ""))


def plot_averaging(joints: dict[str, np.ndarray], radii: dict[str, np.ndarray], reach: float,
                   path: Path, title: str, unit: str = "length units") -> None:
    """Bishop's averaging effect: histograms of each joint (label -> (N, dof), rad) and of the
    hand's distance from the base (label -> (N,)), with the outer workspace boundary (reach)."""
    plt = _pyplot()
    dof = next(iter(joints.values())).shape[1]
    cols = min(dof + 1, 4)
    rows = -(-(dof + 1) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False,
                             constrained_layout=True)
    axes = grid.ravel()
    for ax in axes[dof + 1:]:
        ax.set_visible(False)
    for j in range(dof):
        ax = axes[j]
        values = np.concatenate([q[:, j] for q in joints.values()])
        bins = np.linspace(values.min(), values.max(), 61)
        counts = [ax.hist(q[:, j], bins=bins, histtype="step", lw=1.6, color=f"C{i}",
                          label=f"{label} (mean {q[:, j].mean():.2f})")[0]
                  for i, (label, q) in enumerate(joints.items())]
        _log_if_spiky(ax, counts)
        ax.set_xlabel(f"joint {j + 1}, theta{j + 1} (rad)")
        ax.set_title(f"theta{j + 1}")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=7)
    ax = axes[dof]
    values = np.concatenate(list(radii.values()))
    bins = np.linspace(values.min(), max(values.max(), reach), 61)
    counts = [ax.hist(r, bins=bins, histtype="step", lw=1.6, color=f"C{i}",
                      label=f"{label} (mean margin {np.mean(reach - r):.3f})")[0]
              for i, (label, r) in enumerate(radii.items())]
    ax.axvline(reach, color="k", ls="--", lw=1, label=f"outer boundary (reach {reach:.3f})")
    _log_if_spiky(ax, counts)
    ax.set_xlabel(f"hand distance from the base ({unit})")
    ax.set_title("hand positions")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    _save(fig, path)


# -- 1-D toy problem figures (ikmdn demo sinusoid) ---------------------------------------------

def plot_points(x: np.ndarray, y: np.ndarray, path: Path, title: str, xlabel: str, ylabel: str,
                curves: list[tuple[str, np.ndarray, np.ndarray]] = (),
                label: str = "training data") -> None:
    """Scattered data (N,) vs (N,), with optional curves (label, x (M,), y (M,)) on top."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8), constrained_layout=True)
    ax.plot(x, y, ".", ms=2.5, color="0.55", alpha=0.6, label=label)
    for i, (curve_label, cx, cy) in enumerate(curves):
        ax.plot(cx, cy, color=f"C{i + 1}", lw=2.2, ls="-" if i == 0 else "--", label=curve_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, markerscale=3)
    _save(fig, path)


def plot_modes_and_samples(data: tuple[np.ndarray, np.ndarray], grid: np.ndarray,
                           weights: np.ndarray, means: np.ndarray,
                           samples: tuple[np.ndarray, np.ndarray], path: Path, title: str,
                           xlabel: str, ylabel: str, min_weight: float = 0.05) -> None:
    """The MDN's conditional modes and samples over the data.

    data: (inputs (N,), outputs (N,)); grid (M,) inputs with weights (M, K) and means (M, K) of
    the predicted mixture; a component's mean is drawn where its weight >= min_weight, with a
    marker size growing with the weight; samples: (inputs (S,), drawn outputs (S,)).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8), constrained_layout=True)
    ax.plot(*data, ".", ms=2.5, color="0.75", label="test data")
    ax.plot(*samples, ".", ms=2.5, color="C1", alpha=0.6, label="samples from the MDN")
    for k in range(weights.shape[1]):
        show = weights[:, k] >= min_weight
        ax.scatter(grid[show], means[show, k], s=2 + 14 * weights[show, k], color=f"C{(k % 8) + 2}",
                   zorder=3, label=f"mean of component {k + 1}" if show.any() else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, markerscale=2, ncol=2)
    _save(fig, path)


def plot_mixing(grid: np.ndarray, weights: np.ndarray, path: Path, title: str, xlabel: str) -> None:
    """Mixing coefficients pi_k(input), weights (M, K), against the input grid (M,)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    for k in range(weights.shape[1]):
        ax.plot(grid, weights[:, k], lw=1.8, color=f"C{(k % 8) + 2}", label=f"pi_{k + 1}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mixing coefficient pi_k (probability)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)


def plot_density(grid_in: np.ndarray, grid_out: np.ndarray, density: np.ndarray,
                 data: tuple[np.ndarray, np.ndarray], path: Path, title: str, xlabel: str,
                 ylabel: str) -> None:
    """Heat map of the conditional density p(output | input): density (L, M) over grid_out (L,)
    x grid_in (M,), with the data (inputs (N,), outputs (N,)) as faint dots."""
    plt = _pyplot()
    from matplotlib.colors import PowerNorm

    fig, ax = plt.subplots(figsize=(7.0, 4.8), constrained_layout=True)
    mesh = ax.pcolormesh(grid_in, grid_out, density, shading="auto", cmap="inferno",
                         norm=PowerNorm(0.5, vmin=0, vmax=float(np.percentile(density, 99.5))),
                         rasterized=True)
    ax.plot(*data, ".", ms=1.2, color="w", alpha=0.35, label="test data")
    fig.colorbar(mesh, ax=ax, label="p(output | input) (per output unit, sqrt scale)")
    ax.set_xlim(grid_in.min(), grid_in.max())
    ax.set_ylim(grid_out.min(), grid_out.max())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, markerscale=4, loc="upper left", facecolor="0.2", labelcolor="w")
    _save(fig, path)
