"""The HTML report, on run folders written by hand (no training, no Ray)."""
from __future__ import annotations

import base64
import json
import re

import pytest

from autoprune.config import SearchConfig
from autoprune.policy import Policy
from autoprune.report import SECTIONS, write_report
from autoprune.results import RunDir, load_run
from autoprune.trial import TrialResult

GROUPS = {"conv1": 16, "layer1.0.conv1": 16, "layer1.1.conv1": 16, "layer2.0.conv1": 32, "layer2.1.conv1": 32,
          "layer3.0.conv1": 64, "layer3.1.conv1": 64}
BASE_FLOPS, BASE_PARAMS = 40_000_000, 270_000


def _policy(sparsity: dict, importance: str = "l1") -> Policy:
    return Policy("resnet20", sparsity, GROUPS, importance=importance)


def _result(trial: int, origin: str, sparsity: dict | None, val_acc: float | None, status: str = "ok",
            importance: str = "l1", target: float = 0.5, error: str = "") -> TrialResult:
    policy = _policy(sparsity, importance) if sparsity is not None else None
    kept = sum(policy.kept().values()) / sum(GROUPS.values()) if policy is not None else None
    ratio = kept ** 2 if kept is not None else None  # FLOPs fall about with the square of the width
    return TrialResult(trial=trial, status=status, origin=origin, val_acc=val_acc,
                       flops=int(ratio * BASE_FLOPS) if ratio else None, flops_ratio=ratio,
                       params=int(ratio * BASE_PARAMS) if ratio else None, params_ratio=ratio,
                       finetune_s=1.0, trial_s=1.5, policy=policy if status != "failed" else None, error=error,
                       target_ratio=target, epochs=0.5)


def _run(tmp_path, results: list[TrialResult], *, finished: bool, left_out: dict | None = None, trials: int = 8,
         baseline: bool = True):
    config = SearchConfig(model="resnet20", dataset="digits", budget_flops="50%", trials=trials,
                          results_dir=str(tmp_path), name="run")
    run = RunDir(tmp_path / "run")
    run.write_config(config, {"groups": list(GROUPS), "left_out": left_out or {}})
    if baseline:
        run.write_baseline({"model": "resnet20", "dataset": "digits", "flops": BASE_FLOPS, "params": BASE_PARAMS,
                            "val_acc": 0.96, "val_images": 180, "input_shape": [3, 32, 32], "num_classes": 10})
    for r in results:
        run.append(r, ("flops", 0.5))
    if finished:
        run.write_front(config, json.loads((run.path / "baseline.json").read_text()))
        run.write_state(finished=True)
    return run.path


def _uniform(s: float) -> dict:
    return {g: s for g in GROUPS}


def _finished_results() -> list[TrialResult]:
    shaped = {g: (0.1 if g.startswith(("conv1", "layer1")) else 0.45) for g in GROUPS}
    return [
        _result(0, "uniform:l1@0.500", _uniform(0.3), 0.90, target=0.5),
        _result(1, "uniform:bn_scale@0.500", _uniform(0.3), 0.91, importance="bn_scale", target=0.5),
        _result(2, "uniform:l1@0.125", _uniform(0.65), 0.70, target=0.125),
        _result(3, "optuna", shaped, 0.935),
        _result(4, "optuna", {g: 0.5 for g in GROUPS}, 0.80, target=0.3),
        _result(5, "optuna", _uniform(0.2), None, status="infeasible", error="flops 0.64 over the budget 0.5"),
        _result(6, "optuna", None, None, status="failed", error="RuntimeError: boom"),
        _result(7, "optuna", {g: 0.55 if g.startswith("layer3") else 0.25 for g in GROUPS}, 0.88, target=0.35),
    ]


def _check_page(page: str) -> None:
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings == list(SECTIONS) == ["Front", "Per-layer shape", "Convergence", "Budgets", "Left out", "Trials"]
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", page, re.I), "the page fetches from the network"
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page
    for src in re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", page):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_finished_run_gets_every_section_with_inline_images(tmp_path):
    path = _run(tmp_path, _finished_results(), finished=True, left_out={"fc": "the classifier's outputs are fixed"})
    out = write_report(path)
    assert out == path / "report.html"
    page = out.read_text()
    _check_page(page)
    assert len(re.findall(r"<img ", page)) == 3  # front, per-layer bars, hypervolume
    assert "Pick (best within the budget): trial 3" in page
    assert re.search(r"Against uniform pruning: the pick is \+8\.53 points over the uniform curve at its size, "
                     r"beyond the validation noise on 180 images", page)
    assert "uniform policy at the nearest size (trial 1" in page  # bn_scale led at that size
    assert "fc" in page and "the classifier&#x27;s outputs are fixed" in page
    assert "flops 0.64 over the budget 0.5" in page and "RuntimeError: boom" in page
    assert page.count('<tr class="ok">') == 6 and "unfinished" not in page
    # the kept channels of the pick, from its policy: 16 -> 14 in layer1, 64 -> 35 in layer3
    shape = page.split('<section id="per-layer-shape">')[1].split("</section>")[0]
    assert "<td>14</td>" in shape and "<td>35</td>" in shape


def test_interrupted_run_without_uniform_or_pareto_csv(tmp_path):
    results = [_result(3, "optuna", _uniform(0.4), 0.85),
               _result(4, "optuna", None, None, status="failed", error="worker died")]
    path = _run(tmp_path, results, finished=False, trials=24)
    assert not (path / "pareto.csv").exists()
    page = write_report(path).read_text()
    _check_page(page)
    assert "unfinished: 2 of 24 trials recorded" in page
    assert "No uniform trial has finished ok yet" in page
    assert "no uniform policy finished" in page  # the verdict says why it cannot compare
    assert len(re.findall(r"<img ", page)) == 3


@pytest.mark.parametrize("results", [
    [],
    [_result(0, "uniform:l1@0.500", None, None, status="failed", error="out of memory")],
], ids=["no trial", "no ok trial"])
def test_run_without_any_ok_trial_says_so_in_each_section(tmp_path, results):
    page = write_report(_run(tmp_path, results, finished=False, baseline=bool(results))).read_text()
    _check_page(page)
    assert "No trial has finished ok yet, so there is no front" in page
    assert "no pick whose shape to draw" in page
    assert "<img " not in page


def test_cli_report_html_writes_the_page(tmp_path, capsys):
    from autoprune.cli import main

    path = _run(tmp_path, _finished_results(), finished=True)
    assert main(["report", str(path), "--html"]) == 0
    assert f"report: {path / 'report.html'}" in capsys.readouterr().out
    _check_page((path / "report.html").read_text())


def test_uniform_pick_draws_the_best_searched_shape_beside_it(tmp_path):
    results = _finished_results()
    results[1] = results[1].replace(val_acc=0.95)  # the uniform policy at the budget leads
    page = write_report(_run(tmp_path, results, finished=True)).read_text()
    _check_page(page)
    assert "the pick is the uniform policy (bn_scale)" in page
    assert "Drawn instead: the best searched shape on the front, trial 3." in page
    assert "searched (trial 3)" in page and "uniform (trial 1)" in page


def test_a_latency_run_shows_milliseconds_in_the_pick_the_front_and_the_plot(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from helpers_runs import make_run

    axes = []
    real = Axes.secondary_xaxis
    monkeypatch.setattr(Axes, "secondary_xaxis", lambda self, loc, **kw: axes.append(kw) or real(self, loc, **kw))
    path = make_run(tmp_path, latency=True)
    run = load_run(path)
    best = run.best()
    page = write_report(path).read_text()
    _check_page(page)
    assert f"({best['latency_ms']:.3g} ms)" in page and "<th>latency_ms</th>" in page
    forward, back = axes[-1]["functions"]  # the top axis: ratio -> ms of the unpruned 4 ms, and back
    assert forward(0.5) == 2.0 and back(2.0) == 0.5
    assert run.pareto["latency_ms"].notna().all()
