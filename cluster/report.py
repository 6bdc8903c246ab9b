"""`tandem report RUN_DIR`: a run's metrics as PNG plots and one self-contained report.html.

Reads what every run writes (metrics.jsonl, summary.json, config.yaml, and samples.jsonl when
logging.samples_every asked for samples); a plot is drawn only for the metrics the run has
(RL or offline, with or without a critic, KL, staleness, goodput), so the same command serves
every mode. The HTML embeds the plots, so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

TIMERS = ("gen_s", "reward_s", "train_s", "sync_s", "switch_s")  # cluster/rl/controller.py: the step's parts


@dataclass(frozen=True)
class Plot:
    name: str  # the PNG's file stem
    title: str
    ylabel: str
    series: tuple[tuple[str, str], ...]  # (metric key, legend label)
    stacked: bool = False  # the series add up (a time breakdown)


PLOTS = (
    Plot("reward", "Reward", "reward", (("reward_mean", "mean reward"), ("score_mean", "mean score (shaped)"))),
    Plot("accuracy", "Accuracy", "accuracy", (("accuracy", "training samples"), ("eval_accuracy", "held out"))),
    Plot("kl", "KL to the reference policy", "KL per token", (("kl", "KL"),)),
    Plot("entropy", "Policy entropy", "nats per token", (("entropy", "entropy"),)),
    Plot("response_length", "Response length", "tokens",
         (("response_len", "trained samples"), ("dropped_response_len", "dropped samples (stale or filtered)"))),
    Plot("staleness", "Staleness of trained samples", "policy versions behind",
         (("staleness_mean", "mean"), ("staleness_max", "max"))),
    Plot("time", "Time per step, by stage", "seconds",
         tuple((key, key.removesuffix("_s")) for key in TIMERS), stacked=True),
    Plot("throughput", "Throughput", "samples / s", (("samples_per_s", "samples / s"),)),
    Plot("goodput", "Goodput: trained against generated tokens", "tokens / s",
         (("goodput_tokens_per_s", "trained (goodput)"), ("generated_tokens_per_s", "generated"))),
    Plot("loss", "Training loss", "loss", (("loss", "policy"), ("value_loss", "critic"))),
    Plot("learning_rate", "Learning rate", "lr", (("lr", "policy"), ("critic_lr", "critic"))),
    Plot("held_out", "Held-out metrics (offline)", "value",
         (("eval_nll", "NLL per token"), ("eval_margin", "margin"), ("eval_accuracy_pairs", "pair accuracy"))),
)


class ReportError(ValueError):
    """A directory that is not a run directory (the message names what is missing)."""


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _points(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
    return [p[0] for p in pts], [p[1] for p in pts]


def _draw(plot: Plot, rows: list[dict], path: Path) -> bool:
    """The plot's PNG at `path`; False (nothing written) when the run has none of its metrics."""
    present = [(key, label) for key, label in plot.series if _points(rows, key)[0]]
    if not present:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    if plot.stacked:
        steps = sorted({s for key, _ in present for s in _points(rows, key)[0]})
        by_key = {key: dict(zip(*_points(rows, key))) for key, _ in present}
        ax.stackplot(steps, *[[by_key[key].get(s, 0.0) for s in steps] for key, _ in present],
                     labels=[label for _, label in present])
    else:
        for key, label in present:
            steps, values = _points(rows, key)
            ax.plot(steps, values, label=label, marker="o" if len(steps) < 30 else None, markersize=3)
    ax.set(title=plot.title, xlabel="step", ylabel=plot.ylabel)
    ax.grid(alpha=0.3)
    if len(present) > 1 or plot.stacked:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _metric_rows(run_dir: Path, summary: dict) -> list[dict]:
    """metrics.jsonl with the held-out accuracy before training added at step 0 (RL runs keep it
    in summary.json); offline pair accuracy renamed so it is not drawn as RL accuracy."""
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    initial = (summary.get("eval") or {}).get("initial_accuracy")
    if isinstance(initial, (int, float)):
        rows.insert(0, {"step": 0, "eval_accuracy": initial})
    if summary.get("mode") in ("reward_model", "dpo"):
        rows = [{("eval_accuracy_pairs" if k == "eval_accuracy" else k): v for k, v in r.items()} for r in rows]
    return rows


def write_report(run_dir: str | Path, out: Optional[str | Path] = None) -> Path:
    """The plots (PNG) and report.html under `out` (default: <run dir>/report); returns the HTML's path."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise ReportError(f"{run_dir}: no metrics.jsonl (not a Tandem run directory, or a run that logged no step)")
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    rows = _metric_rows(run_dir, summary)
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    drawn = [p for p in PLOTS if _draw(p, rows, out / f"{p.name}.png")]
    page = _html(run_dir, summary, drawn, out)
    (out / "report.html").write_text(page)
    return out / "report.html"


def _html(run_dir: Path, summary: dict, drawn: list[Plot], out: Path) -> str:
    esc = html.escape
    facts = _facts(summary)
    images = "".join(
        f'<figure><img alt="{esc(p.title)}" src="data:image/png;base64,'
        f'{base64.b64encode((out / f"{p.name}.png").read_bytes()).decode()}"></figure>' for p in drawn)
    samples = _read_jsonl(run_dir / "samples.jsonl")[-20:]
    sample_rows = "".join(
        f"<tr><td>{s['step']}</td><td><code>{esc(str(s['prompt']))}</code></td>"
        f"<td><code>{esc(str(s['response']))}</code></td><td>{esc(str(s['answer']))}</td>"
        f"<td>{s['reward'] if s['reward'] is None else round(s['reward'], 4)}</td>"
        f"<td>{s['policy_version']}</td></tr>" for s in samples)
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Tandem report: {esc(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}}
figure{{display:inline-block;margin:0.5em}}img{{max-width:640px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left;vertical-align:top}}
pre{{background:#f6f6f6;padding:1em}}
</style></head><body>
<h1>Tandem report: {esc(run_dir.name)}</h1>
<table>{"".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)}</table>
<h2>Metrics</h2>{images or "<p>No step metrics to plot.</p>"}
{f"<h2>Samples (the last {len(samples)})</h2><table><tr><th>step</th><th>prompt</th><th>response</th><th>answer</th>"
 f"<th>reward</th><th>policy version</th></tr>{sample_rows}</table>" if samples else ""}
<h2>Config</h2><pre>{esc(config)}</pre>
</body></html>
"""


def _facts(summary: dict) -> list[tuple[str, str]]:
    """The summary's headline facts, as (label, text) rows."""
    facts = [("run directory", summary.get("run_dir", "")), ("status", summary.get("status", "unknown")),
             ("mode / algorithm", f"{summary.get('mode', 'rl')} / {summary.get('algorithm', '')}"),
             ("steps", str(summary.get("steps", "")))]
    ev = summary.get("eval") or {}
    if "initial_accuracy" in ev:
        def pct(v):
            return "n/a" if v is None else f"{100 * v:.1f}%"

        facts.append(("held-out accuracy", f"{pct(ev.get('initial_accuracy'))} -> {pct(ev.get('final_accuracy'))} "
                                           f"({ev.get('num_prompts')} prompts)"))
    elif "initial" in ev:
        facts.append(("held-out", f"{json.dumps(ev['initial'])} -> {json.dumps(ev.get('final'))}"))
    if "wall_s" in summary:
        facts.append(("wall time", f"{summary['wall_s']:.1f} s"))
    if "throughput" in summary:
        facts.append(("throughput", f"{summary['throughput']['samples_per_s']:.1f} samples/s, "
                                    f"{summary['throughput']['tokens_per_s']:.1f} tokens/s"))
    if "weight_sync" in summary:
        w = summary["weight_sync"]
        facts.append(("weight sync", f"{w['count']} updates, {w['checksum_failures']} failed checks, "
                                     f"{w.get('bytes_per_update', 0) / 1e6:.1f} MB each"))
    return facts
