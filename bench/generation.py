"""Generation speed: the `hf` engine against `transformers.generate` on the same weights.

The model is bench/compute_vs_trl.py's 19.0M-parameter Llama (fp32, random weights, the
character tokenizer); every sample decodes exactly `--new-tokens` tokens (the engine's
`min_new_tokens` = max; generate's `min_new_tokens`), temperature 1, at batch 1, 32 and 128.
Each contender runs `--rounds` times per batch size, the contenders interleaved round by
round in one process (this machine's speed drifts by 10-20% between runs), after one
warm-up call each; the median is reported. Contenders: the engine as it is (oneDNN linears,
`model.cpu_linear` auto), the engine with transformers' own concatenating DynamicCache (the
engine before its growing cache), the engine on PyTorch's F.linear (MKL; `model.cpu_linear`
aten: the engine before oneDNN), and `model.generate` (sampling, top_k 0, DynamicCache) on
the stock model, as a user of transformers runs it.

    .venv/bin/python bench/generation.py

Writes bench/results/generation.json and .md. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/tandem-bench-compute")
    args = parser.parse_args()
    import torch

    import rollout.hf_engine as hf
    from bench.compute_vs_trl import build
    from rollout.types import GenerationRequest, SamplingParams

    torch.set_num_threads(args.threads)
    path, n_params = build(Path(args.workdir))
    engine = hf.HFEngine(str(path))
    aten_engine = hf.HFEngine(str(path), cpu_linear="aten")  # stock Linear layers: generate's, and the before figure
    tok = engine.tokenizer
    prompts = [json.loads(line)["prompt"] for line in (path / "train.jsonl").read_text().splitlines() if line]
    n = args.new_tokens

    def contenders(batch: int):
        reqs = [GenerationRequest(group_id=i, prompt_id=i, prompt=p, prompt_ids=tuple(tok(p)["input_ids"]), answer="",
                                  num_samples=1) for i, p in enumerate(prompts[:batch])]
        params = SamplingParams(temperature=1.0, max_new_tokens=n, min_new_tokens=n, seed=0)
        enc = tok([r.prompt for r in reqs], return_tensors="pt", padding=True)

        def run_engine(growing: bool, contender=engine):
            hf.GROWING_CACHE = growing
            out = contender.generate(reqs, params, 0, batch)
            assert {len(r.response_ids) for r in out} == {n}

        def run_generate():
            with torch.no_grad():
                out = aten_engine.model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=n,
                                            min_new_tokens=n, pad_token_id=tok.pad_token_id)
            assert out.shape[1] == enc["input_ids"].shape[1] + n

        return {"hf engine": lambda: run_engine(True), "hf engine, concatenating cache": lambda: run_engine(False),
                "hf engine, F.linear (MKL)": lambda: run_engine(True, aten_engine),
                "transformers.generate": run_generate}

    rows = []
    for batch in args.batches:
        runs = contenders(batch)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.rounds):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["transformers.generate"])
        for name, ts in times.items():
            rows.append({"batch": batch, "contender": name, "seconds": ts, "median_s": statistics.median(ts),
                         "tokens_per_s": batch * n / statistics.median(ts), "vs_generate": base / statistics.median(ts)})
    hf.GROWING_CACHE = True
    meta = {"params": n_params, "new_tokens": n, "rounds": args.rounds, "threads": args.threads,
            "machine": f"{os.cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d"),
            "command": ".venv/bin/python bench/generation.py"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "generation.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = ["| batch | contender | median s | tokens/s | vs transformers.generate | runs (s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['contender']} | {r['median_s']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{r['vs_generate']:.2f}x | {' / '.join(f'{t:.2f}' for t in r['seconds'])} |")
    head = (f"`{meta['command']}` ({meta['machine']}, {args.threads} threads, {meta['date']}): {n_params / 1e6:.1f}M "
            f"Llama, fp32, {n} new tokens per sample, median of {args.rounds} interleaved rounds")
    (RESULTS / "generation.md").write_text(head + "\n\n" + "\n".join(lines) + "\n")
    print(head + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
