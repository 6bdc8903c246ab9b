"""The weight-transfer bucket format (rollout/transfer/buckets.py) and the collective carrier's
group (rollout/transfer/collective.py): exact bytes in the training dtype, every corruption or
mix-up refused, and a peer that is missing or dies surfacing as an error within the timeout."""

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rollout.transfer.buckets import (HEADER_BYTES, TensorSpec, WeightSyncError, fingerprint, pack, plan_layout,
                                      unpack)

ROOT = Path(__file__).resolve().parents[2]


def tensors():
    g = torch.Generator().manual_seed(0)
    return {"embed": torch.randn(50, 16, generator=g).to(torch.bfloat16),  # 1600 bytes
            "norm": torch.randn(16, generator=g),                           # 64
            "scale": torch.tensor(0.5),                                     # 4 (a 0-dim tensor)
            "head": torch.randn(16, 40, generator=g)}                       # 2560: alone in its bucket


def layout(bucket_bytes=2048):
    return plan_layout([TensorSpec(n, tuple(t.shape), str(t.dtype).removeprefix("torch."))
                        for n, t in tensors().items()], bucket_bytes)


def test_layout_bounds_buckets_and_keeps_every_tensor_once():
    lay = layout()
    assert [[s.name for s in b] for b in lay.buckets] == [["embed", "norm", "scale"], ["head"]]
    assert lay.payload_bytes == (1600 + 64 + 8, 2560)  # 8-byte aligned offsets
    assert [s.offset for s in lay.buckets[0]] == [0, 1600, 1664]
    assert lay.total_bytes == 1600 + 64 + 4 + 2560  # the model's bytes in its own dtypes


def test_round_trip_is_bit_exact_in_the_training_dtype():
    lay, src = layout(), tensors()
    got = {}
    for i in range(len(lay.buckets)):
        buf = pack(lay, i, src, version=7)
        assert buf.numel() == HEADER_BYTES + lay.payload_bytes[i]
        got.update(unpack(lay, i, buf.clone(), version=7))
    assert got.keys() == src.keys()
    for name, t in src.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape  # bf16 stays bf16
        assert torch.equal(got[name].view(torch.uint8) if t.dim() else got[name], t.view(torch.uint8) if t.dim() else t)


@pytest.mark.parametrize("damage", ["flip a bit", "swap two words", "zero the tail"])
def test_corrupted_bucket_is_refused(damage):
    lay, src = layout(), tensors()
    buf = pack(lay, 0, src, version=3)
    payload = buf[HEADER_BYTES:]
    if damage == "flip a bit":
        payload[777] ^= 4
    elif damage == "swap two words":  # same bytes, other order: a plain sum would not notice
        a, b = payload[0:8].clone(), payload[8:16].clone()
        assert not torch.equal(a, b)
        payload[0:8], payload[8:16] = b, a
    else:
        payload[-64:] = 0
    with pytest.raises(WeightSyncError, match=r"v3 bucket 0/2: fingerprint mismatch"):
        unpack(lay, 0, buf, version=3)


@pytest.mark.parametrize("change", ["one word", "two words in a row swapped", "two rows swapped",
                                    "a tail word", "a word moved to the tail"])
def test_fingerprint_sees_changed_and_moved_words(change):
    """On 100,000 words: 195 full rows of 512 plus a 160-word tail (the test buckets above
    are all tail)."""
    g = torch.Generator().manual_seed(1)
    words = torch.randint(-2**62, 2**62, (100_000,), generator=g, dtype=torch.int64)
    before = fingerprint(words.view(torch.uint8))
    w = words.clone()
    if change == "one word":
        w[1234] += 1
    elif change == "two words in a row swapped":
        w[512 * 3 + 5], w[512 * 3 + 9] = words[512 * 3 + 9], words[512 * 3 + 5]
    elif change == "two rows swapped":
        w[0:512], w[512:1024] = words[512:1024], words[0:512]
    elif change == "a tail word":
        w[-3] ^= 1 << 40
    else:
        w[-1], w[7] = words[7], words[-1]
    assert fingerprint(w.view(torch.uint8)) != before
    assert fingerprint(words.clone().view(torch.uint8)) == before  # a copy fingerprints the same


def test_wrong_version_index_or_size_is_refused():
    lay, src = layout(), tensors()
    buf = pack(lay, 0, src, version=3)
    with pytest.raises(WeightSyncError, match=r"v4 bucket 0/2: the buffer is v3 bucket 0 \(out of order\)"):
        unpack(lay, 0, buf, version=4)
    other = pack(lay, 1, src, version=3)
    with pytest.raises(WeightSyncError, match=r"bytes of torch.uint8, expected"):
        unpack(lay, 0, other, version=3)  # bucket 1's buffer where bucket 0's belongs
    with pytest.raises(WeightSyncError, match="the layout says"):
        pack(lay, 0, {**src, "norm": torch.zeros(17)}, version=3)


MEMBER = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {root!r})
    from rollout.transfer.buckets import TensorSpec, pack, plan_layout, unpack
    from rollout.transfer.collective import TransferGroup
    rank, world, port, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    t = {{"w": torch.arange(3000, dtype=torch.float32).view(100, 30), "b": torch.ones(7, dtype=torch.bfloat16)}}
    lay = plan_layout([TensorSpec(n, tuple(v.shape), str(v.dtype)[6:]) for n, v in t.items()], 4096)
    g = TransferGroup("127.0.0.1", port, rank, world, "gloo", 5.0, "127.0.0.1")
    if mode == "die" and rank == world - 1:
        sys.exit(0)  # joins the group, then is gone before the update
    got = {{}}
    t0 = time.time()
    if mode == "updates":  # three updates through the sender's two pack buffers, the engine's two landing sets
        from rollout.transfer.buckets import PackRing
        ring, kept = PackRing(), []
        for v in (1, 2, 3):
            w = {{n: x * v for n, x in t.items()}}
            if rank == 0:
                g.send(((i, pack(lay, i, w, v, ring.out(lay, i, "cpu"))) for i in range(len(lay.buckets))), lay, v)
            else:
                kept.append(g.receive(lay, v, "cpu"))
                assert all(torch.equal(kept[-1][n], x) for n, x in w.items()), v
                if v == 2:  # update 1's tensors are still intact while update 2 is held
                    assert all(torch.equal(kept[0][n], x) for n, x in t.items())
        print("OK", len(ring.buffers) == 2 if rank == 0 else kept[0]["w"].data_ptr() == kept[2]["w"].data_ptr())
        sys.exit(0)
    try:
        for i in range(len(lay.buckets)):
            buf = pack(lay, i, t, 1) if rank == 0 else torch.empty(lay.buffer_bytes(i), dtype=torch.uint8)
            g.broadcast(buf, f"update v1 bucket {{i}}")
            got.update(unpack(lay, i, buf, 1))
        print("OK", all(torch.equal(got[n], v) for n, v in t.items()))
    except Exception as e:
        print("ERR", round(time.time() - t0, 1), type(e).__name__, e)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def members(world: int, mode: str, ranks=None) -> list[str]:
    port, script = free_port(), MEMBER.format(root=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r), str(world), str(port), mode],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (ranks if ranks is not None else range(world))]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        outs.append(out.strip() or (err.strip().splitlines() or [""])[-1])
    return outs


def test_collective_group_broadcasts_every_bucket_exactly():
    assert members(3, "ok") == ["OK True"] * 3


def test_successive_updates_reuse_the_pack_and_landing_buffers_exactly():
    """The sender packs into two reused buffers; each engine lands update v where update v - 2
    landed (host memory): every update arrives exact, and update v - 1 stays intact meanwhile."""
    assert members(3, "updates") == ["OK True"] * 3


def test_a_missing_peer_is_an_error_naming_the_backend_and_ranks_not_a_hang():
    t0 = time.time()
    (out,) = members(2, "ok", ranks=[0])
    assert "WeightSyncError" in out and "'collective' (gloo, rank 0 of 2" in out and "did not form within 5 s" in out
    assert time.time() - t0 < 30


def test_a_peer_that_dies_before_the_update_fails_the_sender_within_the_timeout():
    outs = members(2, "die")
    assert not outs[1].startswith(("OK", "ERR"))  # it left without a word (gloo may warn on stderr)
    assert outs[0].startswith("ERR") and "broadcast of update v1 bucket 0" in outs[0], outs
    assert float(outs[0].split()[1]) < 30
