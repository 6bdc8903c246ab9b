import numpy as np
import pytest

from rollout.weight_sync import WeightSyncError, WeightUpdate, describe, verify


def arrays():
    rng = np.random.default_rng(0)
    return {"a.weight": rng.standard_normal((4, 3)).astype(np.float32), "b.bias": np.arange(5, dtype=np.float32)}


def update_for(version, arrs):
    metas, checksum = describe(version, arrs)
    return WeightUpdate(version, metas, tuple(range(len(metas))), checksum)


def test_verify_accepts_intact_update():
    arrs = arrays()
    out = verify(update_for(1, arrs), list(arrs.values()), expected_version=1)
    assert list(out) == ["a.weight", "b.bias"]


def test_corrupted_tensor_is_rejected():
    arrs = arrays()
    update = update_for(1, arrs)
    bad = [a.copy() for a in arrs.values()]
    bad[0][2, 1] += 1e-6  # one value off in the last bits
    with pytest.raises(WeightSyncError, match="checksum mismatch for 'a.weight'"):
        verify(update, bad, expected_version=1)


def test_wrong_version_is_rejected():
    arrs = arrays()
    with pytest.raises(WeightSyncError, match="version 3, receiver expected 2"):
        verify(update_for(3, arrs), list(arrs.values()), expected_version=2)


def test_tampered_manifest_is_rejected():
    arrs = arrays()
    update = update_for(1, arrs)
    forged = WeightUpdate(2, update.tensors, update.refs, update.checksum)  # version changed, checksum kept
    with pytest.raises(WeightSyncError, match="manifest checksum"):
        verify(forged, list(arrs.values()), expected_version=2)


def test_shape_mismatch_is_rejected():
    arrs = arrays()
    update = update_for(1, arrs)
    with pytest.raises(WeightSyncError, match="manifest says float32"):
        verify(update, [arrs["a.weight"].reshape(3, 4), arrs["b.bias"]], expected_version=1)
