"""Asynchronous vs synchronous training at cluster scale, by simulation (cluster/rl/simulate.py:
the real Scheduler and StalenessGate driven by latency models; no weights, no GPUs).
Writes bench/results/simulate_async.{json,md} and prints the headline table.

    .venv/bin/python bench/simulate_async.py [--quick]

For 8 to 1,024 simulated GPUs: the best asynchronous configuration against synchronous
colocated training, as speedup in trained samples per second and in trained (response)
tokens per second, against plain sync and against a length-matched sync (a synchronous run
given exactly the groups async trained: the same samples, the same tokens), in steady state
and over a whole run (pipeline fill and end-of-run drain included); the mean trained length
of each mode, the share of complete groups dropped as too stale, GPU utilisation and the
controller's own cost. --quick runs a small sweep and writes nothing.

Sweep (every choice here is a modelling assumption; see also cluster/rl/simulate.py):
* Batch grows with the cluster: 4 prompts per GPU per step, 8 samples per prompt (32
  samples per GPU, 2,048 at 64 GPUs). Steady state: a window of 15 steps after 10 warm-up
  steps, with generation going on past the window (a slice of a long run; the longest
  responses span several steps, so a shorter window under-counts them). Whole run: the same
  25 steps from an empty pipeline to the end-of-run drain, same configuration.
* sync: colocated, every GPU generates the whole batch, then all train, then sync (k = 0).
* async: disaggregated; the generation/training split is searched over 1/4, 3/8, 1/2, 5/8,
  3/4 of the GPUs at k = 4, then k = 1 and 2 are run at the best split; the fastest steady
  state wins. At 512 and 1,024 GPUs the best (k, split) found at 256 is reused instead of
  searched (the model is close to scale-free when the batch grows with the cluster; the
  table shows the best configuration per size up to 256 so this can be checked).
  sync-disagg: k = 0 on the chosen split (not run at the sizes that reuse a split).
* The main sweep models the system as built for GPUs: vLLM workers that stream each rollout
  and run several calls at once (2026-12-07), the collective weight sync in the training
  dtype, dispatch to the least-loaded engine, doomed groups aborted, the `oldest` staleness
  rule, generation always k steps ahead (`controller.lookahead: eager`); the collective sync
  and vLLM on GPUs are written against the pinned APIs but have not run on a GPU yet. Rows at
  64 GPUs vary one piece each: the `newest` staleness rule, no abort, the `hf` engine (one
  call at a time), the vLLM worker before 2026-12-07 (whole calls), the object-store weight
  sync as it was until 2026-12-06, the rotating split used until then, all of those old
  pieces together; and two controls (uniform short lengths, a 4x larger batch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.rl.simulate import (  # noqa: E402
    PHASES, LatencyModel, SimResult, SimSpec, WeightSyncModel, simulate)

RESULTS = Path(__file__).parent / "results"
FRACTIONS = (1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4)
KS = (1, 2, 4)
PROMPTS_PER_GPU, GROUP_SIZE = 4, 8
WARMUP, STEPS = 10, 15


def base_spec(gpus: int, model: LatencyModel, steps: int = STEPS, warmup: int = WARMUP) -> SimSpec:
    """The sweep measures what each k buys: generation always k steps ahead (`eager`). The
    adaptive lookahead (the default) measures step times over 16-step windows and re-measures
    every 200 steps: a 25-step window would show its start-up, not its steady state."""
    return SimSpec(gpus, "colocated", gpus, 0, steps, PROMPTS_PER_GPU * gpus, GROUP_SIZE, model=model,
                   warmup_steps=warmup, drain=False, lookahead="eager")


def disaggregated(spec: SimSpec, gen: int, k: int) -> SimSpec:
    return replace(spec, placement="disaggregated", gen_gpus=gen, max_staleness=k)


MAIN = "long-tailed"
MAIN_REUSED = "long-tailed (k, split from the largest searched size)"
OLD_SYNC = WeightSyncModel(protocol="object_store", receiver="vllm")  # until 2026-12-06


def summary(r: SimResult) -> dict:
    s = r.spec
    return {"placement": s.placement, "k": s.max_staleness, "gen_gpus": s.gen_gpus, "learners": s.learners,
            "wall_s": r.wall_s, "step_s_mean": r.wall_s / s.steps, "samples_per_s": r.samples_per_s,
            "tokens_per_s": r.tokens_per_s, "tokens": r.tokens,
            "utilisation": r.utilisation, "weighted_utilisation": r.weighted_utilisation,
            "stale_groups": r.stale_groups, "stale_groups_per_step": r.stale_groups / s.steps,
            "dropped_frac": r.dropped_frac, "staleness": r.staleness, "generated": r.generated,
            "generated_tokens": r.generated_tokens, "useful_fraction": r.useful_fraction,
            "aborted_groups": r.aborted_groups,
            "aborted_frac": r.aborted_groups / (r.aborted_groups + r.stale_groups + r.samples / s.group_size),
            "samples": r.samples, "mean_len_trained": r.mean_len_trained,
            "mean_len_generated": r.mean_len_generated, "partial_frac": r.partial_frac,
            "sync_s": s.model.sync.total_s, "controller_ms_per_sample": r.controller_ms_per_sample,
            "take_ms_mean": r.take_ms_mean, "take_calls": r.take_calls}


def whole_run(spec: SimSpec) -> SimSpec:
    """The same steps as one whole run: from an empty pipeline to the end-of-run drain."""
    return replace(spec, steps=spec.warmup_steps + spec.steps, warmup_steps=0, drain=True)


def length_matched(spec: SimSpec, run: SimResult) -> SimResult:
    """Synchronous colocated training given exactly the groups `run` trained, step by step."""
    return simulate(replace(spec, replay=run.run_groups))


def speedups(sync: SimResult, run: SimResult, same_work: SimResult) -> dict:
    # same_work trains the same samples and tokens as run: one ratio covers both
    return {"samples": run.samples_per_s / sync.samples_per_s, "tokens": run.tokens_per_s / sync.tokens_per_s,
            "matched": run.tokens_per_s / same_work.tokens_per_s}


def compare(label: str, key: str, spec: SimSpec, candidates: list[tuple[int, int]],
            tried: list[SimResult] = (), disaggregated_k0: bool = True) -> dict:
    """sync vs the fastest async run (the (gen_gpus, k) candidates, plus runs already made),
    against plain and length-matched sync, steady state and whole run; k = 0 on the winner's
    split unless disaggregated_k0 is False (saves a run where the split was not searched)."""
    sync = simulate(spec)
    tried = list(tried) + [simulate(disaggregated(spec, gen, k)) for gen, k in candidates]
    best = min(tried, key=lambda r: r.wall_s)
    gen, k = best.spec.gen_gpus, best.spec.max_staleness
    sync_dis = simulate(disaggregated(spec, gen, 0)) if disaggregated_k0 else None
    same = length_matched(spec, best)
    whole = whole_run(spec)
    w_sync, w_async = simulate(whole), simulate(disaggregated(whole, gen, k))
    w_same = length_matched(whole, w_async)
    return {"gpus": spec.gpus, "variant": label, "key": key, "prompts_per_step": spec.prompts_per_step,
            "group_size": spec.group_size, "steps": spec.steps, "warmup_steps": spec.warmup_steps,
            "steady": speedups(sync, best, same), "whole": speedups(w_sync, w_async, w_same),
            "speedup_sync_disaggregated": sync.wall_s / sync_dis.wall_s if sync_dis else None,
            "sync": summary(sync), "async": summary(best), "sync_matched": summary(same),
            "sync_disaggregated": summary(sync_dis) if sync_dis else None,
            "whole_run": {"sync": summary(w_sync), "async": summary(w_async), "sync_matched": summary(w_same)},
            "tried": [{"k": r.spec.max_staleness, "gen_gpus": r.spec.gen_gpus, "wall_s": r.wall_s} for r in tried]}


def searched(label: str, key: str, spec: SimSpec) -> dict:
    """Split search at the largest k, then the other k on the best split."""
    n, top = spec.gpus, max(KS)
    splits = sorted({min(max(round(f * n), 1), n - 1) for f in FRACTIONS})
    at_top = [simulate(disaggregated(spec, gen, top)) for gen in splits]
    first = min(at_top, key=lambda r: r.wall_s).spec.gen_gpus
    return compare(label, key, spec, [(first, k) for k in KS if k != top], at_top)


def sweep(sizes: tuple[int, ...], search_up_to: int, controls: bool, log) -> list[dict]:
    model = LatencyModel()
    rows, best = [], None
    for n in sizes:
        spec = base_spec(n, model)
        if n <= search_up_to or best is None:
            row = searched(MAIN, "main", spec)
            best = (row["async"]["gen_gpus"] / n, row["async"]["k"])
        else:
            row = compare(MAIN_REUSED, "main", spec, [(round(best[0] * n), best[1])], disaggregated_k0=False)
        rows.append(row)
        log(headline_line(row))
    if controls:
        rows += control_rows(rows, model, log)
    return rows


def control_rows(rows: list[dict], model: LatencyModel, log) -> list[dict]:
    main = next(r for r in rows if r["gpus"] == 64)
    pick = [(main["async"]["gen_gpus"], main["async"]["k"])]
    on_split = [(pick[0][0], k) for k in KS]
    spec = base_spec(64, model)
    one_call, whole_call = replace(model, engine_calls="one_call"), replace(model, engine_calls="whole_call")
    before = replace(whole_call, sync=OLD_SYNC)
    out = []
    for make in (
        lambda: searched("staleness rule `newest` (the group's last token bounded)", "newest",
                         replace(spec, staleness_rule="newest")),
        lambda: compare("doomed groups not aborted", "no_abort", replace(spec, abort_doomed=False), pick),
        lambda: compare("one call at a time per worker (the `hf` engine before 2026-12-07's shared decode thread)", "hf", base_spec(64, one_call), on_split),
        lambda: compare("vLLM worker before 2026-12-07: whole calls", "engines", base_spec(64, whole_call), on_split),
        lambda: searched("object-store weight sync as until 2026-12-06: fp32, blake2b", "sync",
                         base_spec(64, replace(model, sync=OLD_SYNC))),
        lambda: searched("before 2026-12-06: whole-call vLLM, object-store sync, rotating split", "before",
                         replace(base_spec(64, before), dispatch="pool")),
        lambda: compare("rotating split (until 2026-12-06)", "pool", replace(spec, dispatch="pool"), pick),
        lambda: searched("uniform 500-1500 tokens (no tail)", "uniform",
                         base_spec(64, replace(model, lengths="uniform"))),
        lambda: compare("batch x4 (128 samples per GPU)", "batch", replace(spec, prompts_per_step=16 * 64), pick),
    ):
        out.append(make())
        log(headline_line(out[-1]))
    return out


HEADLINE = ("| GPUs | variant | async k, gen+train GPUs | samples/s vs sync: steady, whole run "
            "| tokens/s vs sync: steady, whole run | vs length-matched sync: steady, whole run "
            "| trained len sync → async | groups dropped stale, aborted | useful tokens |")
DETAILS = ("| GPUs | variant | step s sync → async | vs sync-disagg | util sync → async "
           "| weighted util sync → async | stale groups/step (of P) | weight sync s | partial samples "
           "| controller ms/sample sync, async | take() ms/call |")


def headline_line(r: dict) -> str:
    s, a, st, wh = r["sync"], r["async"], r["steady"], r["whole"]
    return (f"| {r['gpus']} | {r['variant']} | k={a['k']}, {a['gen_gpus']}+{a['learners']} "
            f"| {st['samples']:.2f}x, {wh['samples']:.2f}x | {st['tokens']:.2f}x, {wh['tokens']:.2f}x "
            f"| {st['matched']:.2f}x, {wh['matched']:.2f}x "
            f"| {s['mean_len_trained']:.0f} → {a['mean_len_trained']:.0f} "
            f"| {a['dropped_frac']:.0%}, {a['aborted_frac']:.0%} | {a['useful_fraction']:.0%} |")


def details_line(r: dict) -> str:
    s, a, dis = r["sync"], r["async"], r["speedup_sync_disaggregated"]
    return (f"| {r['gpus']} | {r['variant']} | {s['step_s_mean']:.0f} → {a['step_s_mean']:.0f} "
            f"| {'—' if dis is None else f'{dis:.2f}x'} "
            f"| {s['utilisation']:.2f} → {a['utilisation']:.2f} "
            f"| {s['weighted_utilisation']:.3f} → {a['weighted_utilisation']:.3f} "
            f"| {a['stale_groups_per_step']:.1f} ({r['prompts_per_step']}) | {a['sync_s']:.1f} "
            f"| {a['partial_frac']:.0%} | {s['controller_ms_per_sample']:.3f}, {a['controller_ms_per_sample']:.3f} "
            f"| {max(s['take_ms_mean'], a['take_ms_mean']):.2f} |")


def table(header: str, lines: list[str]) -> str:
    return "\n".join([header, "|" + "---|" * header.count(" | ") + "---|"] + lines)


SYNC_MODELS = {"collective (the design; 7B in bf16)": WeightSyncModel(),
               "object store as until 2026-12-06, vLLM engine": OLD_SYNC,
               "object store as until 2026-12-06, hf engine": replace(OLD_SYNC, receiver="hf")}


def sync_table() -> str:
    header = ("| weight sync | GB into each engine host | blake2b passes | export s | receive s "
              "| swap s (engines paused) | total s |")
    lines = [f"| {name} | {m.wire_bytes / 1e9:.0f} | {m.hash_passes} | "
             + " | ".join(f"{m.phase_s(p):.1f}" for p in PHASES) + f" | {m.total_s:.1f} |"
             for name, m in SYNC_MODELS.items()]
    return table(header, lines)


def sync_notes() -> list[str]:
    m, today = WeightSyncModel(), OLD_SYNC
    fast = replace(today, copy_gbps=10.0)
    stages = "; ".join(f"{name} {s:.1f} s" for _, name, s in today.stages())
    return [
        f"Weight sync, per sync, for a {m.params / 1e9:.0f}B-parameter model trained in bf16 "
        f"({m.train_bytes} bytes per parameter) with ZeRO-3. Assumed: {m.net_gbps:.0f} GB/s into each engine "
        f"host and between learners, {m.pcie_gbps:.0f} GB/s host <-> GPU, {m.fixed_s} s fixed per sync, "
        f"{m.device_hash_gbps:.0f} GB/s for an on-GPU fingerprint. Measured on this 2-core host, one thread: "
        f"blake2b {m.hash_gbps} GB/s, a copy into fresh memory {m.copy_gbps:.0f} GB/s (numpy copy 3.2, "
        "bytes() 1.5; tensor_checksum end to end 0.58 GB/s, as the model gives: 1/(1/0.84 + 1/2)).",
        "",
        "The object-store sync as it was until 2026-12-06 (rollout/weight_sync.py, since replaced by "
        "rollout/transfer/; trainer/learner.py export_weights, "
        "rollout/pool.py, rollout/vllm_engine.py and vllm_worker.py), stage by stage: " + stages + ". "
        f"The learners gather the whole model, rank 0 casts it to fp32 ({today.wire_bytes / 1e9:.0f} GB), "
        "hashes it once, the engine host hashes it once to verify, and the vLLM engine three more times "
        "(its manifest, the vLLM worker's check of the /dev/shm file, and again on load): "
        f"{today.hash_passes} passes. With copies at 10 GB/s instead it would take {fast.total_s:.0f} s.",
        "",
        "The controller blocks for the whole sync (as the real loop does); engines decode through export "
        "and receive and pause only for the swap. The collective sync (rollout/transfer/collective.py: "
        "tested on CPU over gloo, not yet run over NCCL) broadcasts the training dtype and keeps the "
        "engines paused from the broadcast to the swap.",
    ]


def markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    return "\n".join([
        f"# Asynchronous vs synchronous training, simulated ({meta['host']})", "",
        f"`{meta['command']}` — {meta['elapsed_s']:.0f} s. Simulated clock; every number below comes from "
        "latency models (cluster/rl/simulate.py), not from GPUs.", "",
        "## Headline", "", table(HEADLINE, [headline_line(r) for r in rows]), "",
        "## What it says", "", *findings(rows), "",
        "## Details", "", table(DETAILS, [details_line(r) for r in rows]), "",
        "## Weight sync model", "", sync_table(), "", *sync_notes(), "",
        NOTES.strip(), ""])


def findings(rows: list[dict]) -> list[str]:
    """The headline numbers in words, computed from the rows (so they cannot go stale)."""
    main = {r["gpus"]: r for r in rows if r["key"] == "main"}
    ctl = {r["key"]: r for r in rows if r["key"] != "main"}
    r64, r1024 = main[64], main[max(main)]
    a, s, st, wh = r64["async"], r64["sync"], r64["steady"], r64["whole"]
    ks = sorted({r["async"]["k"] for r in main.values()})
    take = max(r1024["sync"]["take_ms_mean"], r1024["async"]["take_ms_mean"])
    ctl_ms = max(r1024["sync"]["controller_ms_per_sample"], r1024["async"]["controller_ms_per_sample"])

    def fig(r: dict) -> str:
        return (f"{r['steady']['samples']:.1f}x steady / {r['whole']['samples']:.1f}x whole run in samples/s, "
                f"{r['steady']['matched']:.1f}x / {r['whole']['matched']:.1f}x against length-matched sync "
                f"(k={r['async']['k']}, {r['async']['gen_gpus']}+{r['async']['learners']})")

    mc = ctl["newest"]
    return [
        f"- 64 GPUs, long-tailed lengths, the system as built for GPUs (vLLM workers streaming each rollout "
        f"and running several calls at once, collective weight sync, doomed groups aborted, `oldest` rule): "
        f"async (k={a['k']}, {a['gen_gpus']} generating + {a['learners']} training) trains {st['samples']:.1f}x "
        f"the samples per second of colocated sync in steady state and {wh['samples']:.1f}x over a whole "
        f"{r64['warmup_steps'] + r64['steps']}-step run (fill and drain included); in trained tokens per second "
        f"{st['tokens']:.1f}x and {wh['tokens']:.1f}x.",
        f"- Under the `oldest` rule the long responses are the ones that cannot train: {a['dropped_frac']:.0%} of "
        f"the complete groups are dropped stale and {a['aborted_frac']:.0%} of the groups are aborted while "
        f"generating, and async trains responses of {a['mean_len_trained']:.0f} tokens on average against "
        f"{s['mean_len_trained']:.0f} for sync ({a['useful_fraction']:.0%} of the tokens generated are trained). "
        f"Against a sync run doing the same work (given exactly the groups async trained, step by step) the gain "
        f"is {st['matched']:.1f}x steady and {wh['matched']:.1f}x whole run. The sync step waits "
        f"~{s['step_s_mean']:.0f} s for the longest response of its batch "
        f"(~{r64['sync_matched']['step_s_mean']:.0f} s with the same work). k = {', '.join(map(str, ks))} wins "
        "across sizes" + (" (the largest tried)." if ks == [max(KS)] else "."),
        f"- The `newest` rule (the group's last token bounded, as AReaL and PipelineRL) removes the length "
        f"bias: trained {mc['async']['mean_len_trained']:.0f} tokens against {mc['sync']['mean_len_trained']:.0f} "
        f"for sync, {mc['async']['useful_fraction']:.0%} of the tokens generated trained, "
        f"{mc['steady']['samples']:.1f}x sync in samples/s and {mc['steady']['tokens']:.1f}x in tokens/s "
        f"({mc['steady']['matched']:.1f}x against length-matched sync; k={mc['async']['k']}, "
        f"{mc['async']['gen_gpus']}+{mc['async']['learners']}); its price: tokens up to "
        f"{mc['async']['staleness']['oldest_seen']} versions old are trained (each weighed by its own behaviour "
        f"logprob). Without aborting doomed groups (`oldest`): {fig(ctl['no_abort'])}.",
        f"- Engines: one call at a time per worker (the `hf` engine until its calls shared one decode thread, late "
        f"2026-12-07; still so in synchronous runs): {fig(ctl['hf'])}; the vLLM worker before "
        f"2026-12-07 (one call at a time, a call's rollouts returned together): {fig(ctl['engines'])}.",
        f"- The object-store weight sync as it was until 2026-12-06 ({ctl['sync']['async']['sync_s']:.0f} s per "
        f"sync as modelled below): {fig(ctl['sync'])}. The system before 2026-12-06 (whole-call vLLM, that sync, "
        f"the rotating split): {fig(ctl['before'])}.",
        f"- The rotating split instead of least-loaded dispatch: {ctl['pool']['steady']['samples']:.1f}x. "
        f"Without a tail (uniform 500-1,500 tokens) async gains {ctl['uniform']['steady']['samples']:.1f}x "
        f"({ctl['uniform']['steady']['matched']:.1f}x against length-matched sync); with a 4x larger batch per "
        f"GPU the long-tailed gain is {ctl['batch']['steady']['samples']:.1f}x "
        f"({ctl['batch']['steady']['matched']:.1f}x).",
        f"- Controller at {r1024['gpus']} GPUs: {ctl_ms:.2f} ms per sample at most (target < 1 ms) with the "
        f"controller looking once per simulated second. Scheduler.take() averages {take:.1f} ms per call "
        "there: a call that returns a batch sorts the groups waiting, a call with nothing to train returns "
        "at once.",
    ]


NOTES = """
Columns. samples/s and tokens/s vs sync: async's trained samples (tokens: response tokens)
per simulated second over colocated sync's; steady = a 15-step window after 10 warm-up steps
with generation going on past it, whole run = the same 25 steps from an empty pipeline to the
end-of-run drain, same configuration. vs length-matched sync: against a synchronous run given
exactly the groups async trained, step by step (the same samples and tokens: one ratio).
Trained len: mean response length of the samples trained (steady). Groups dropped stale:
complete groups the gate refused as older than k versions, of all complete groups judged
(dropped, counted, replaced); aborted: groups stopped while generating because they could no
longer meet the bound, of all groups that ended (replaced). Useful tokens: response tokens
trained / generated in the window (aborted groups' partial responses included). sync-disagg = k = 0 on the async split. util = busy GPU-seconds / (GPUs
x wall); weighted util counts a decode step at its throughput relative to a full batch.
Partial samples: trained samples whose tokens span two versions. Controller: real seconds
inside Scheduler/gate calls per sample scored; take() ms/call is the real cost of one
Scheduler.take() at that scale.

Modelling assumptions (defaults of cluster/rl/simulate.py's LatencyModel; nothing was tuned to
reach a target):
- Response lengths lognormal, median 1,000 tokens, sigma 1.0, half the log-variance shared by
  a group, capped at 16,384; prompts 256 tokens; uniform 500-1,500 for the control.
- Engine per GPU: continuous batching of up to 256 sequences, decode step 20 ms + 0.05 ms per
  active sequence, 5 ms prefill per joining sequence; groups to the least-loaded engine.
  Streaming (the vLLM worker since 2026-12-07, and the `hf` engine in asynchronous runs since
  its calls share one decode thread): rollouts return as they finish and new calls join the
  running batch. One call (the `hf` engine before, or in a synchronous run): rollouts return
  as they finish, one call at a time per worker. Whole call (the vLLM worker before 2026-12-07): one call at a
  time, its rollouts returned when its last sample ends.
- Doomed groups (`oldest` rule: a sample started more than k versions behind) are aborted
  at each weight sync and replaced; under `newest` nothing incomplete is doomed.
- Rewards: lognormal latency per sample (median 30 ms, sigma 1, cap 10 s), unlimited
  parallel workers, Bernoulli(0.5) rewards.
- Learner: 1.25e-4 GPU-seconds per token (prompt + response) / learner GPUs + 2 s per step.
- Weight sync: the model above; in-flight sequences continue under the new version after
  the swap (interrupt); colocated mode waits out the whole sync.
- The controller blocks during training and sync, as the real loop does, and handles what
  has arrived at most once per simulated second.
- Batch: 4 prompts x 8 samples per GPU per step.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 and 64 GPUs, no controls; writes nothing")
    args = ap.parse_args()
    t0 = time.perf_counter()
    sizes = (8, 64) if args.quick else (8, 16, 32, 64, 128, 256, 512, 1024)
    print(HEADLINE)
    rows = sweep(sizes, search_up_to=256, controls=not args.quick, log=print)
    command = ".venv/bin/python bench/simulate_async.py" + (" --quick" if args.quick else "")
    meta = {"command": command, "elapsed_s": time.perf_counter() - t0,
            "host": f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
            "model": asdict(LatencyModel()),
            "sync_models": {name: {"stages": m.stages(), "total_s": m.total_s, "hash_passes": m.hash_passes,
                                   "wire_bytes": m.wire_bytes} for name, m in SYNC_MODELS.items()},
            "prompts_per_gpu": PROMPTS_PER_GPU, "group_size": GROUP_SIZE,
            "warmup_steps": WARMUP, "steps": STEPS, "fractions": FRACTIONS, "ks": KS}
    result = {"meta": meta, "rows": rows}
    print(f"\n{meta['elapsed_s']:.0f} s")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "simulate_async.json").write_text(json.dumps(result, indent=2))
        (RESULTS / "simulate_async.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
