"""`ikmdn demo sinusoid`: the inverted 1-D toy problem, trained in seconds, with the post's figures."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from conftest import run_python

from ikmdn import demo
from ikmdn.cli import cli
from ikmdn.demo import FIGURES, METRIC_KEYS, VARIANTS, SinusoidDemo, ToySettings

# A few epochs of small networks: enough to produce every file, in a second or two.
TINY = {name: ToySettings(**{**vars(s), "samples": 400, "epochs": 3, "hidden": (8,),
                             "batch_size": 100}) for name, s in VARIANTS.items()}


@pytest.fixture(scope="module")
def bishop_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "bishop"
    job = SinusoidDemo("bishop", out, seed=1, settings=TINY["bishop"])
    seen = []
    metrics = job.run(on_step=seen.append)
    assert seen == job.steps
    return out, metrics


def test_demo_writes_every_file(bishop_demo):
    import matplotlib.image

    out, _ = bishop_demo
    assert {p.name for p in out.iterdir()} == {"metrics.json", "report.md", *FIGURES.values()}
    for name in FIGURES.values():
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 400, name
        assert image[..., :3].std() > 0.05, f"{name} looks blank"


def test_demo_metrics_and_report(bishop_demo):
    out, metrics = bishop_demo
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert set(METRIC_KEYS) <= set(on_disk)
    assert on_disk["variant"] == "bishop" and on_disk["seed"] == 1
    assert set(on_disk["test_nll"]) == set(on_disk["train_seconds"]) == {"least_squares", "mdn"}
    assert on_disk["settings"]["components"] == VARIANTS["bishop"].components
    report = (out / "report.md").read_text()
    assert set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)) == set(FIGURES.values())
    assert f"{on_disk['test_nll']['mdn']:.3f}" in report


def test_demo_is_reproducible(bishop_demo, tmp_path):
    again = SinusoidDemo("bishop", tmp_path / "again", seed=1, settings=TINY["bishop"]).run()
    assert again["test_nll"] == bishop_demo[1]["test_nll"]


def test_cli_demo(tmp_path, monkeypatch):
    monkeypatch.setitem(demo.VARIANTS, "post", TINY["post"])
    out = tmp_path / "post"
    result = CliRunner().invoke(cli, ["demo", "sinusoid", "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out}/report.md: test NLL least squares")
    assert json.loads((out / "metrics.json").read_text())["variant"] == "post"


def test_cli_demo_refuses_a_used_out_folder(tmp_path):
    out = tmp_path / "used"
    out.mkdir()
    (out / "x.txt").write_text("keep")
    result = CliRunner().invoke(cli, ["demo", "sinusoid", "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"Error: --out {out} already holds files; choose another "
                                     "folder or pass --force")
    assert [p.name for p in out.iterdir()] == ["x.txt"]


def test_cli_demo_rejects_unknown_names(tmp_path):
    for args in (["demo", "cosine", "--out", str(tmp_path / "a")],
                 ["demo", "sinusoid", "--variant", "nope", "--out", str(tmp_path / "b")]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and "Invalid value" in result.stderr
    assert not any(tmp_path.iterdir())


def test_importing_the_demo_imports_no_torch():
    done = run_python("import sys, ikmdn.demo, ikmdn.report, ikmdn.cli\n"
                      "print('torch' in sys.modules)\n")
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
