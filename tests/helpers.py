"""Helpers shared by the test modules: CLI invocation and assertions, and a stand-in model."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from ikmdn.arms.closed_form import closed_form_ik
from ikmdn.cli import cli
from ikmdn.mixture import Mixture

NPZ_ARRAYS = {"targets", "joints", "weights", "sigmas", "positions", "errors", "rotation_errors",
              "within_limits", "distinct", "reachable", "fallback"}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.exception is None
    return result


def error_line(result) -> str:
    """The one 'Error: ...' line, last on stderr; no traceback."""
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


def assert_refused(result, *fragments: str, code: int = 2) -> str:
    """Exit code, nothing at all on stdout, one short error line naming every fragment."""
    assert result.exit_code == code, (result.output, result.exception)
    assert result.stdout == "", result.stdout[:500]
    line = error_line(result)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def assert_usage_error(result, *fragments: str) -> str:
    """Exit 2, a one-line 'Error: ...' naming every fragment, no traceback, nothing on stdout."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def model_format(path) -> str | None:
    """The ikmdn.format metadata of an .onnx file (None without one), read without a session."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    return meta.get("ikmdn.format")


class PerturbedOracle:
    """A stand-in model whose modes are closed-form solutions plus noise (known good seeds). The
    oracle reports continuous joints in [lo, lo + 2 pi), so on a +-2 pi arm the seeds sit on the
    lower turn: the solver has to choose the reported turn itself."""

    def __init__(self, arm, noise: float, seed: int):
        self.arm, self.noise, self.rng = arm, noise, np.random.default_rng(seed)
        self.components = 8

    def predict(self, targets, threads=None) -> Mixture:
        branches, valid = closed_form_ik(self.arm, targets)
        means = np.where(valid[..., None], branches, 0.0)
        means = means + self.noise * self.rng.standard_normal(means.shape)
        weights = valid / valid.sum(axis=1, keepdims=True)
        return Mixture(weights, means, np.full(means.shape, 0.1))
