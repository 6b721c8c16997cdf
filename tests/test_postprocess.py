"""Post-processing gateware against ``golden.postprocess.postprocess``: random transfers,
saturation, shift extremes, rounding ties, residual saturation; rate and latency in edges."""

import numpy as np
import pytest

from gateware.postprocess import PostProcess
from golden.fixedpoint import ACT_BITS, RES_BITS
from golden.postprocess import postprocess
from tests.sim_helpers import stream_through

I32 = (-(1 << 31), (1 << 31) - 1)


def _golden(t, narrow_bits=ACT_BITS):
    res = t["residual"] if t["add_residual"] else None
    return postprocess(np.array(t["acc"]), t["bias"], t["mult"], t["shift"],
                       narrow_bits if t["narrow"] else RES_BITS, residual=res)


def _simulate(dut, transfers, *, in_gaps=None, out_stalls=None):
    beats = [{**t, "acc": [int(v) for v in t["acc"]],
              "residual": [int(v) for v in t["residual"]]} for t in transfers]
    outs, in_cycles, out_cycles = stream_through(dut, beats, len(beats), in_gaps=in_gaps, out_stalls=out_stalls)
    assert [int(p.last) for p in outs] == [int(t["last"]) for t in transfers]
    return [[int(v) for v in p.data] for p in outs], in_cycles, out_cycles


def _check(lanes, transfers, narrow_bits=ACT_BITS, **kw):
    dut = PostProcess(lanes, narrow_bits=narrow_bits)
    got, in_cycles, out_cycles = _simulate(dut, transfers, **kw)
    for g, t in zip(got, transfers):
        np.testing.assert_array_equal(g, _golden(t, narrow_bits), err_msg=str(t))
    return dut, in_cycles, out_cycles


def _transfer(acc, bias=0, mult=1, shift=0, residual=None, add_residual=False, narrow=False,
              last=False):
    acc = [int(v) for v in acc]
    residual = [0] * len(acc) if residual is None else [int(v) for v in residual]
    return {"acc": acc, "bias": int(bias), "mult": int(mult), "shift": int(shift),
            "residual": residual, "add_residual": bool(add_residual), "narrow": bool(narrow),
            "last": bool(last)}


def _random(rng, lanes, n):
    out = []
    for j in range(n):
        scale = int(rng.integers(1, 33))
        acc = rng.integers(-(1 << (scale - 1)), 1 << (scale - 1), lanes)
        out.append(_transfer(acc, rng.integers(-(1 << 20), 1 << 20), rng.integers(0, 1 << 16),
                             rng.integers(0, 63), rng.integers(-(1 << 15), 1 << 15, lanes),
                             rng.random() < 0.5, rng.random() < 0.5, j % 5 == 4))
    return out


@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_random(lanes):
    rng = np.random.default_rng(lanes)
    _check(lanes, _random(rng, lanes, 200))


def test_int8_narrow():
    rng = np.random.default_rng(4)
    _check(3, _random(rng, 3, 100), narrow_bits=8)


def test_backpressure():
    rng = np.random.default_rng(5)
    _check(2, _random(rng, 2, 150), in_gaps=np.random.default_rng(6),
           out_stalls=np.random.default_rng(7))


def test_saturation_and_shift_extremes():
    """Largest products both signs, shift 0 and 62, narrow and wide, bias overflowing int32."""
    accs = [I32[0], I32[1], -1, 0, 1, I32[0] + 1]
    ts = []
    for bias in (I32[0], I32[1], 0, -5):
        for mult in (0, 1, 65535, 32768):
            for shift in (0, 1, 15, 31, 47, 48, 49, 50, 62):
                for narrow in (False, True):
                    ts.append(_transfer(accs, bias, mult, shift, narrow=narrow))
    _check(6, ts)


def test_rounding_ties():
    """Exact .5 cases, positive and negative, round half up (towards +inf); and neighbours."""
    ts = []
    for shift in (1, 2, 3, 8, 20, 28):
        half = 1 << (shift - 1)
        base = np.array([-3, -2, -1, 0, 1, 2, 3]) << shift
        for delta in (half - 1, half, half + 1, -half - 1, -half, -half + 1):
            ts.append(_transfer(base + delta, 0, 1, shift))
            ts.append(_transfer(base + delta, 0, 1, shift, narrow=True))
    # Large shifts: the tie sits in the product, (2j+1) * 2**(shift-1) with mult = 2**15.
    for shift in (32, 40, 46):
        odd = np.array([-7, -5, -3, -1, 1, 3, 5]) << (shift - 16)
        ts.append(_transfer(np.clip(odd, -(1 << 31), (1 << 31) - 1), 0, 1 << 15, shift))
        ts.append(_transfer(np.clip(odd + 1, -(1 << 31), (1 << 31) - 1), 0, 1 << 15, shift))
    # Ties reached through the multiplier and the bias too: (2k+1) * 2**(s-1) after the product.
    ts.append(_transfer([3, -3, 5, -5, 1, -1, 7], 0, 1 << 10, 11))
    ts.append(_transfer([2, -4, 4, -6, 0, -2, 6], 1, 1 << 10, 11))
    _check(7, ts)


def test_residual_saturates_once():
    """Residual at int16 extremes: the sum saturates, never wraps; without the flag it is ignored."""
    res = [32767, -32768, 32767, -32768, 100, -100]
    accs = [1, -1, -40000, 40000, 32700, -32700]
    ts = [_transfer(accs, 0, 1, 0, res, True),
          _transfer(accs, 0, 1, 0, res, True, narrow=True),
          _transfer(accs, 0, 1, 0, res, False),
          _transfer([I32[1]] * 3 + [I32[0]] * 3, I32[1], 65535, 0, res, True),
          _transfer([I32[1]] * 3 + [I32[0]] * 3, 0, 65535, 62, res, True),
          _transfer([-200, 200, 0, 0, -27, 27], 0, 1, 0, [-32768, 32767, 0, -1, 100, -100], True,
                    narrow=True)]
    _check(6, ts)


def test_rate_and_latency():
    """One transfer per cycle in, out ``latency`` edges later."""
    rng = np.random.default_rng(9)
    ts = _random(rng, 4, 64)
    dut, in_cycles, out_cycles = _check(4, ts)
    print(f"PostProcess lanes=4: {len(ts)} transfers in {in_cycles[-1] - in_cycles[0] + 1} cycles, "
          f"latency {out_cycles[0] - in_cycles[0]}")
    assert in_cycles == list(range(1, len(ts) + 1))
    assert out_cycles == [c + dut.latency for c in in_cycles]
