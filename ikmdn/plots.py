"""Figures (matplotlib, imported lazily so nothing else pays for it)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
