"""`tandem report`: a plot per metric family the run has, none for what it lacks, one HTML file
that embeds them; a directory that is no run is refused by name."""

import base64
import json

import pytest

from cluster.cli import main
from cluster.report import PLOTS, write_report


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def write_run(path, rows, summary, samples=()):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "config.yaml").write_text("run: {name: <demo>}\n")
    if samples:
        (path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


def test_rl_run_gets_its_plots_and_one_self_contained_page(tmp_path, capsys):
    rows = [{"step": s, "reward_mean": 0.1 * s, "accuracy": 0.05 * s, "entropy": 1.0 / s, "response_len": 4.0,
             "staleness_mean": 0.5, "staleness_max": 1, "gen_s": 0.2, "reward_s": 0.05, "train_s": 0.3,
             "sync_s": 0.01, "switch_s": 0.0, "samples_per_s": 900.0 + s, "loss": 0.01, "lr": 1e-3}
            for s in range(1, 6)]
    rows[3]["eval_accuracy"] = 0.4
    rows.append({"step": 5, "eval_accuracy": 0.5, "final": True})
    summary = {"status": "completed", "algorithm": "grpo", "steps": 5, "run_dir": "runs/x",
               "eval": {"initial_accuracy": 0.25, "final_accuracy": 0.5, "num_prompts": 32}}
    sample = {"step": 5, "prompt": "1<2", "response": "3&", "answer": "3", "reward": 0.1, "policy_version": 4}
    run = write_run(tmp_path / "run", rows, summary, [sample])
    assert main(["report", str(run)]) == 0
    page_path = run / "report" / "report.html"
    assert capsys.readouterr().out.strip() == f"report: {page_path}"
    drawn = sorted(p.stem for p in (run / "report").glob("*.png"))
    assert drawn == sorted(["reward", "accuracy", "entropy", "response_length", "staleness", "time", "throughput",
                            "loss", "learning_rate"])  # no KL, goodput or held-out-offline metrics: no plot
    page = page_path.read_text()
    for name in drawn:
        data = (run / "report" / f"{name}.png").read_bytes()
        assert png_size(data) == (640, 360)
        assert base64.b64encode(data).decode() in page  # embedded, not linked
    assert "25.0% -&gt; 50.0% (32 prompts)" in page and "<code>1&lt;2</code>" in page and "<code>3&amp;</code>" in page
    assert "&lt;demo&gt;" in page


def test_offline_run_plots_its_held_out_metrics_and_a_non_run_is_refused(tmp_path, capsys):
    rows = [{"step": 0, "eval_margin": 0.0, "eval_accuracy": 0.0},
            {"step": 1, "loss": 0.69, "lr": 1e-3}, {"step": 2, "loss": 0.6, "lr": 1e-3},
            {"step": 2, "final": True, "eval_margin": 1.1, "eval_accuracy": 1.0}]
    run = write_run(tmp_path / "dpo", rows, {"mode": "dpo", "status": "completed", "steps": 2,
                                             "eval": {"initial": {"margin": 0.0}, "final": {"margin": 1.1}}})
    html = write_report(run, tmp_path / "out")
    assert sorted(p.stem for p in html.parent.glob("*.png")) == ["held_out", "learning_rate", "loss"]
    assert {p.name for p in PLOTS} >= {"held_out", "goodput", "kl"}
    assert main(["report", str(tmp_path)]) == 2
    assert f"tandem: error: {tmp_path}: no metrics.jsonl" in capsys.readouterr().err
