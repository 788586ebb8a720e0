"""The memo of expensive pure computations: a hit returns exactly what the computation returns."""
import numpy as np
import torch

from memcim.config import preset
from memcim.mapping import crossbar
from memcim.mapping.crossbar import map_matrix
from memcim.memo import Memo, digest


def test_digest_tells_apart_bytes_dtype_shape_and_configs():
    a = np.arange(6.0)
    assert digest(a) == digest(a.copy())
    assert digest(a) != digest(a.astype(np.float32))
    assert digest(a) != digest(a.reshape(2, 3))
    assert digest(torch.from_numpy(a)) == digest(a)
    hw = preset("irdrop")
    assert digest(hw.device) == digest(preset("irdrop").device)
    assert digest(hw.device) != digest(hw.set("device.bits", 7).device)


def test_memo_is_bounded_and_least_recently_used():
    m = Memo(2)
    calls = []
    for k in ["a", "b", "a", "c", "b"]:
        m.get(k, lambda k=k: calls.append(k) or k.upper())
    assert calls == ["a", "b", "c", "b"]          # "b" was evicted by "c", "a" was kept by its reuse


def test_irdrop_mapping_reused_across_converters_is_identical_to_a_fresh_one():
    W = np.random.default_rng(0).uniform(-1, 1, (20, 12))
    hw = preset("irdrop").set("mapping.method", "dpe")
    crossbar._IRDROP_TILES.clear()
    first = map_matrix(W, hw)
    again = map_matrix(W, hw.set({"adc.bits": 5, "dac.bits": 5}))       # other converters: a memo hit
    assert crossbar._IRDROP_TILES.hits >= 1
    crossbar._IRDROP_TILES.clear()
    fresh = map_matrix(W, hw.set({"adc.bits": 5, "dac.bits": 5}))
    for a, b in ((again.g_pos, fresh.g_pos), (again.g_neg, fresh.g_neg), (again.scale, fresh.scale),
                 (again.full_scale, fresh.full_scale)):
        assert torch.equal(a, b)
    assert torch.equal(first.g_pos, again.g_pos)
