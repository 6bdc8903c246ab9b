"""Wait until a Ray cluster has N alive nodes (the Slurm script's barrier between starting
Ray on every node and running the recipe).

    python -m cluster.launch.wait_nodes --address HEAD_IP:6379 --nodes 4 --timeout 600
"""

from __future__ import annotations

import argparse
import sys
import time


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def wait_for_nodes(address: str, nodes: int, timeout_s: float, poll_s: float = 1.0) -> int:
    """Connect (retrying while the head is still starting) and wait for `nodes` alive nodes;
    returns how many there are. TimeoutError names the count reached."""
    import ray

    deadline = time.monotonic() + timeout_s
    connected_here = not ray.is_initialized()
    while not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except Exception as exc:  # the head's GCS is not up yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Ray head at {address} after {timeout_s:g} s: {exc}") from None
            time.sleep(poll_s)
    try:
        while (count := alive_nodes()) < nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} of {nodes} Ray nodes joined {address} within {timeout_s:g} s")
            time.sleep(poll_s)
        return count
    finally:
        if connected_here:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="wait until a Ray cluster has N alive nodes")
    p.add_argument("--address", required=True, help="GCS address HOST:PORT")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds")
    args = p.parse_args(argv)
    try:
        count = wait_for_nodes(args.address, args.nodes, args.timeout)
    except TimeoutError as exc:
        print(f"wait_nodes: {exc}", file=sys.stderr)
        return 1
    print(f"{count} Ray node(s) up at {args.address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
