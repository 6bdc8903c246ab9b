"""Weight-sync throughput of each CPU carrier against a plain memcpy of the same bytes, for
10M / 100M / 500M-parameter fp32 state dicts, between two Ray actors on this machine (local
Ray on 127.0.0.1), and the time a sync adds to a quickstart step with each carrier.

  object_store  rank 0 puts each fingerprinted bucket in the object store; the engine fetches and
                checks it (rollout/transfer/object_store.py)
  collective    the same buckets broadcast over a gloo group (rollout/transfer/collective.py)
  memcpy        one torch copy_ of the same bytes between two existing buffers inside the
                receiving actor, one thread

    .venv/bin/python bench/weight_sync.py [--sizes 10 100 500] [--repeats 3] [--steps 20]

Each figure is the median of --repeats updates, timed from the driver (send call to the last
byte verified). Both actors run one torch thread, as the learners and engines do here.
Writes bench/results/weight_sync.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
RESULTS = ROOT / "bench" / "results"
BUCKET_MB = 32  # rollout.weight_bucket_mb's default


def state_dict(n_params: int):
    """A Llama-shaped split of n parameters into 16 tensors (fp32), deterministic."""
    import torch

    g = torch.Generator().manual_seed(0)
    per = n_params // 16
    return {f"model.layers.{i}.weight": torch.randn(per, generator=g) for i in range(16)}


def raw_broadcast(member) -> None:
    """The transport alone: every bucket's bytes broadcast (rank 0 to rank 1) between buffers that
    already exist, nothing packed or checked. Sender and receiver each call it."""
    import torch

    if getattr(member, "raw_buffers", None) is None:
        member.raw_buffers = [torch.zeros(member.layout.buffer_bytes(i), dtype=torch.uint8)
                              for i in range(len(member.layout.buckets))]
    for handle in [member.group.start(b, "raw") for b in member.raw_buffers]:
        member.group.wait(handle)


class Sender:
    def __init__(self, n_params: int):
        import torch

        from rollout.transfer.buckets import TensorSpec, plan_layout

        torch.set_num_threads(1)
        self.tensors = state_dict(n_params)
        self.layout = plan_layout([TensorSpec(k, tuple(v.shape), "float32") for k, v in self.tensors.items()],
                                  BUCKET_MB * 2**20)

    def port(self) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def open(self, port: int) -> None:
        from rollout.transfer.collective import TransferGroup

        self.group = TransferGroup("127.0.0.1", port, 0, 2, "gloo", 300, "127.0.0.1")
        from rollout.transfer.buckets import PackRing

        self.ring = PackRing()  # as the learner packs (trainer/learner.py _packed_buckets)

    def send_collective(self, version: int) -> None:
        from rollout.transfer.buckets import pack

        packed = ((i, pack(self.layout, i, self.tensors, version, self.ring.out(self.layout, i, "cpu")))
                  for i in range(len(self.layout.buckets)))
        self.group.send(packed, self.layout, version)  # as trainer/learner.py send_weights

    def send_raw(self) -> None:
        raw_broadcast(self)

    def send_object_store(self, version: int):
        from rollout.transfer.object_store import store_update

        return store_update(self.layout, self.tensors, version)


class Receiver:
    def __init__(self, layout):
        import torch

        torch.set_num_threads(1)
        self.layout = layout

    def open(self, port: int) -> None:
        from rollout.transfer.collective import TransferGroup

        self.group = TransferGroup("127.0.0.1", port, 1, 2, "gloo", 300, "127.0.0.1")

    def receive_collective(self, version: int) -> int:
        got = self.group.receive(self.layout, version, "cpu")  # as rollout/pool.py receive_weights
        return sum(t.numel() * t.element_size() for t in got.values())

    def receive_object_store(self, update) -> int:
        from rollout.transfer.object_store import fetch_update

        got = fetch_update(self.layout, update)
        return sum(t.numel() * t.element_size() for t in got.values())

    def memcpy(self) -> tuple[float, float]:
        """Seconds of one copy_ of the update's bytes (a) between two buffers that already exist
        (their pages touched by an untimed first copy), as the carriers' steady state has them,
        and (b) into a fresh buffer, which pays the first touch of every page."""
        import torch

        if getattr(self, "copy_buffers", None) is None:
            src = torch.empty(self.layout.total_bytes, dtype=torch.uint8).fill_(1)
            self.copy_buffers = (src, torch.empty_like(src).copy_(src))
        src, dst = self.copy_buffers
        t0 = time.perf_counter()
        dst.copy_(src)
        t1 = time.perf_counter()
        torch.empty_like(src).copy_(src)
        return t1 - t0, time.perf_counter() - t1

    def receive_raw(self) -> None:
        raw_broadcast(self)


def measure(n_params: int, repeats: int) -> dict:
    import ray

    remote = dict(num_cpus=1, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    sender = ray.remote(Sender).options(**remote).remote(n_params)
    layout = ray.get(sender.__ray_call__.remote(lambda self: self.layout))
    receiver = ray.remote(Receiver).options(**remote).remote(layout)
    port = ray.get(sender.port.remote())
    ray.get([sender.open.remote(port), receiver.open.remote(port)])
    times = {"collective": [], "object_store": [], "gloo_raw": [], "memcpy": [], "memcpy_fresh": []}
    for version in range(1, repeats + 2):  # the first round warms both paths up and is not counted
        t0 = time.perf_counter()
        _, got = ray.get([sender.send_collective.remote(version), receiver.receive_collective.remote(version)])
        t1 = time.perf_counter()
        update = ray.get(sender.send_object_store.remote(version))
        got2 = ray.get(receiver.receive_object_store.remote(update))
        t2 = time.perf_counter()
        del update
        assert got == got2 == layout.total_bytes
        ray.get([sender.send_raw.remote(), receiver.receive_raw.remote()])
        t3 = time.perf_counter()
        copy, fresh = ray.get(receiver.memcpy.remote())
        if version > 1:
            times["collective"].append(t1 - t0)
            times["object_store"].append(t2 - t1)
            times["gloo_raw"].append(t3 - t2)
            times["memcpy"].append(copy)
            times["memcpy_fresh"].append(fresh)
    ray.kill(sender)
    ray.kill(receiver)
    nbytes = layout.total_bytes
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"params": n_params, "bytes": nbytes, "buckets": len(layout.buckets), "seconds": med,
            "gb_per_s": {k: nbytes / v / 1e9 for k, v in med.items()},
            "vs_memcpy": {k: med["memcpy"] / med[k] for k in ("collective", "object_store", "gloo_raw")},
            "vs_memcpy_fresh": {k: med["memcpy_fresh"] / med[k] for k in ("collective", "object_store", "gloo_raw")}}


def step_latency(steps: int) -> dict:
    """The quickstart for `steps` steps with each carrier: mean seconds per sync and per step."""
    out = {}
    with tempfile.TemporaryDirectory() as work:
        for kind in ("object_store", "collective"):
            cmd = [str(ROOT / ".venv" / "bin" / "tandem"), "run", str(ROOT / "recipes" / "quickstart.yaml"),
                   f"controller.steps={steps}", "controller.eval_every=0", "controller.eval_prompts=32",
                   f"rollout.weight_transfer={kind}", f"run.output_dir={work}", f"run.name={kind}",
                   "controller.progress=false"]
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            summary = json.loads((Path(work) / kind / "summary.json").read_text())
            t = summary["throughput"]
            step_s = sum(t[k] for k in ("gen_s", "reward_s", "train_s", "sync_s")) / summary["steps"]
            out[kind] = {"sync_s": summary["weight_sync"]["mean_s"], "step_s": step_s,
                         "bytes_per_update": summary["weight_sync"]["bytes_per_update"]}
    return out


def main() -> None:
    import ray

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500], help="millions of parameters")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="quickstart steps per carrier (0: skip)")
    args = ap.parse_args()
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    rows = []
    try:
        for size in args.sizes:
            rows.append(measure(size * 10**6, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    latency = step_latency(args.steps) if args.steps else {}
    command = (f".venv/bin/python bench/weight_sync.py --sizes {' '.join(map(str, args.sizes))} "
               f"--repeats {args.repeats} --steps {args.steps}")
    meta = {"command": command, "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores",
            "bucket_mb": BUCKET_MB}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "weight_sync.json").write_text(json.dumps({"meta": meta, "sizes": rows, "quickstart": latency},
                                                         indent=2))
    lines = [f"`{command}` ({meta['machine']}, {meta['date']}). One fp32 update between two Ray actors "
             f"(one torch thread each), median of {args.repeats}; buckets of {BUCKET_MB} MB. memcpy: one thread "
             f"copying the same bytes between two existing buffers (warm: the carriers reuse theirs) or into a fresh "
             f"one (every page touched for the first time). gloo raw: the same buckets broadcast into existing "
             f"buffers with nothing packed or checked, the transport's own ceiling.", "",
             "| parameters | bytes | memcpy warm / fresh GB/s | gloo raw GB/s | collective GB/s | vs warm / fresh "
             "memcpy / gloo raw | object store GB/s | vs warm / fresh memcpy |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g, v, f = r["gb_per_s"], r["vs_memcpy"], r["vs_memcpy_fresh"]
        lines.append(f"| {r['params'] / 1e6:.0f}M | {r['bytes'] / 2**20:,.0f} MiB | {g['memcpy']:.2f} / "
                     f"{g['memcpy_fresh']:.2f} | {g['gloo_raw']:.2f} | {g['collective']:.2f} | {v['collective']:.0%} / "
                     f"{f['collective']:.0%} / {g['collective'] / g['gloo_raw']:.0%} | {g['object_store']:.2f} | "
                     f"{v['object_store']:.0%} / {f['object_store']:.0%} |")
    if latency:
        lines += ["", f"The quickstart ({args.steps} steps, 0.53M parameters, 2 learners, 1 engine): time a sync adds "
                  "to a step.", "", "| carrier | sync s | step s | sync share | bytes per update |", "|---|---|---|---|---|"]
        for kind, r in latency.items():
            lines.append(f"| {kind} | {r['sync_s'] * 1e3:.1f} ms | {r['step_s']:.3f} | {r['sync_s'] / r['step_s']:.1%} | "
                         f"{r['bytes_per_update'] or '-'} |")
    (RESULTS / "weight_sync.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
