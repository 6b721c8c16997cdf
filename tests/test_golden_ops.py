"""Each golden integer op against a straightforward reference, on random and edge inputs."""

import math
from fractions import Fraction

import numpy as np
import pytest

from model.quantize import quantize_multiplier

from golden.expert_queue import build_expert_queues
from golden.fixedpoint import ACT_BITS, PROB_OPERAND_BITS, int_range, requantize, rshift_round
from golden.gelu import GELU_OUT_FRAC, gelu, gelu_exact, gelu_fixed
from golden.layernorm import RSQRT_BITS, layernorm, layernorm_rsqrt
from golden.mac_array import matmul
from golden.postprocess import postprocess
from golden.softmax import EXP_FRAC, EXP_IN_FRAC, softmax, softmax_exact, softmax_stats
from golden.topk import topk

rng = np.random.default_rng(1234)


def _round_half_up(fr):
    return math.floor(fr + Fraction(1, 2))


def test_rshift_round_matches_exact_fraction():
    x = np.concatenate([rng.integers(-2**40, 2**40, 500), [-5, -4, -3, -2, -1, 0, 1, 2, 3, 5, 6, 7]])
    for s in (0, 1, 2, 7, 31):
        got = rshift_round(x, s)
        want = [_round_half_up(Fraction(int(v), 2 ** s)) for v in x]
        assert list(got) == want


def test_rshift_round_ties_go_up_for_negative_too():
    assert list(rshift_round([-3, -1, 1, 3], 1)) == [-1, 0, 1, 2]     # -1.5 -> -1, -0.5 -> 0


def test_requantize_saturates_both_ways():
    acc = np.array([2**31 - 1, -2**31, 0, 100])
    assert list(requantize(acc, 1 << 15, 15, 8)) == [127, -128, 0, 100]
    assert list(requantize(acc, 1 << 15, 15, 16)) == [32767, -32768, 0, 100]
    with pytest.raises(ValueError):
        requantize(acc, 1 << 16, 1, 8)


def test_matmul_exact_and_rejects_wide_operands():
    a_top, w_top = int_range(PROB_OPERAND_BITS)[1], int_range(ACT_BITS)[1]
    a = rng.integers(-a_top - 1, a_top + 1, (7, 13))
    w = rng.integers(-w_top - 1, w_top + 1, (5, 13))
    assert np.array_equal(matmul(a, w), a @ w.T)
    with pytest.raises(OverflowError):
        matmul(np.full((1, 2), a_top + 1), w[:, :2])
    with pytest.raises(OverflowError):
        matmul(a[:, :2], np.full((1, 2), w_top + 1))


def test_postprocess_residual_saturates_once():
    acc = np.array([[1000, -1000]])
    out = postprocess(acc, np.array([0, 0]), np.array([1 << 15, 1 << 15]), np.array([15, 15]), 16,
                      residual=np.array([[32000, -32000]]))
    assert out.tolist() == [[32767, -32768]]


def test_attention_with_a_fully_dominant_key():
    """p = 2**PROB_FRAC (1.0) must enter the A·V product: the operand is wider than PROB_FRAC + 1
    signed bits."""
    from golden.attention import PROB_FRAC, attention_head
    q = np.array([[127], [127]])
    k = np.array([[127], [-128]])
    v = np.array([[5], [7]])
    out = attention_head(q, k, v, 60000, 0, 1 << 15, 15 + PROB_FRAC)    # av: v * p / 2**PROB_FRAC
    assert out.tolist() == [[5], [5]]


# --- softmax ---------------------------------------------------------------------------------

def _softmax_stats_reference(row):
    """The same recurrence written element by element with Python integers."""
    def exp2_neg(a):
        q, r = a >> EXP_IN_FRAC, a & ((1 << EXP_IN_FRAC) - 1)
        t = math.floor((1 << EXP_FRAC) * 2.0 ** (-r / (1 << EXP_IN_FRAC)) + 0.5)
        q = min(q, 62 - EXP_FRAC)
        return (t + ((1 << q) >> 1)) >> q, t, q
    m, s = int(row[0]), 1 << EXP_FRAC
    for x in map(int, row[1:]):
        if x > m:
            _, t, q = exp2_neg(x - m)
            sh = q + EXP_FRAC
            s = ((s * t + (1 << (sh - 1))) >> sh) + (1 << EXP_FRAC)
            m = x
        else:
            s += exp2_neg(m - x)[0]
    return m, s


@pytest.mark.parametrize("n", [1, 2, 5, 64, 129])
def test_softmax_stats_match_elementwise_reference(n):
    u = rng.integers(-4000, 4000, (20, n))
    m, s = softmax_stats(u)
    for i in range(u.shape[0]):
        assert (m[i], s[i]) == _softmax_stats_reference(u[i])


@pytest.mark.parametrize("out_frac", [8, 15])
def test_softmax_error_bound_random(out_frac):
    for n in (1, 3, 17, 129, 300):
        for spread in (8, 300, 5000, 32767):
            u = rng.integers(-spread, spread + 1, (30, n))
            err = np.abs(softmax(u, out_frac) / 2 ** out_frac - softmax_exact(u)).max()
            assert err <= 2.0 ** -8


def test_softmax_edge_rows():
    assert softmax(np.array([[-32768]]), 8).tolist() == [[256]]             # one element = 1.0
    eq = softmax(np.full((1, 4), 1234), 8)
    assert eq.tolist() == [[64, 64, 64, 64]]                                 # all equal
    wide = softmax(np.array([[-32768, 32767, -32768]]), 8)
    assert wide.tolist() == [[0, 256, 0]]                                    # exp underflows to 0
    late = softmax(np.array([[0, 0, 0, 4096]]), 15)                          # new max arrives last
    assert np.abs(late / 2**15 - softmax_exact(np.array([[0, 0, 0, 4096]]))).max() < 2 ** -12


# --- GELU ------------------------------------------------------------------------------------

def test_gelu_fixed_close_to_exact_over_all_inputs():
    x = np.arange(-2**15, 2**15)
    err = np.abs(gelu_fixed(x) / 2 ** GELU_OUT_FRAC - gelu_exact(x))
    assert err.max() <= 0.65 * 2 ** -GELU_OUT_FRAC          # 0.00031 absolute


def test_gelu_requantised_within_one_output_lsb():
    x = np.arange(-2**15, 2**15)
    top = int_range(ACT_BITS)[1]
    s_h = 128 / (1.25 * top)                               # fine enough that large inputs saturate
    mult, shift = quantize_multiplier(2.0 ** -GELU_OUT_FRAC / s_h)
    s_h = 2.0 ** -GELU_OUT_FRAC / (int(mult) * 2.0 ** -int(shift))
    y = gelu(x, mult, shift)
    exact = gelu_exact(x) / s_h
    inside = np.abs(exact) <= top
    assert np.abs(y[inside] - exact[inside]).max() <= 1.0
    assert y.max() == top and y[-1] == top                 # large inputs saturate


def test_gelu_rejects_out_of_range_input():
    with pytest.raises(OverflowError):
        gelu_fixed(np.array([40000]))


# --- LayerNorm -------------------------------------------------------------------------------

def test_layernorm_rsqrt_exact():
    for v in [1, 2, 3, 10**6, 2**40 + 12345, 2**46]:
        r = int(layernorm_rsqrt(v))
        assert r * r * v <= 2 ** (2 * RSQRT_BITS) < (r + 1) * (r + 1) * v


def test_layernorm_close_to_float():
    x = rng.integers(-20000, 20000, (16, 192))
    gamma = np.full(192, 1 << 12)                          # gamma/s_out = 2**12 * 2**-8 = 16:
    beta = np.zeros(192, dtype=np.int64)                   # gamma 1.0 at output scale 1/16
    y = layernorm(x, gamma, beta, 8, eps_term=1)
    ref = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    want = np.clip(np.round(ref * 16), -128, 127)
    assert np.abs(y - want).max() <= 1


def test_layernorm_constant_row_gives_beta_and_extremes_saturate():
    x = np.full((2, 8), -32768)
    beta = np.full(8, 5 << 16)                             # beta 5 at Z_FRAC + affine_shift = 16 bits
    assert layernorm(x, np.full(8, 1000), beta, 4, eps_term=1).tolist() == [[5] * 8] * 2
    x = np.array([[32767] * 96 + [-32768] * 96])           # z = +-1 (2**Z_FRAC)
    y = layernorm(x, np.full(192, 32767), np.zeros(192, dtype=np.int64), 0, eps_term=1)
    assert (y[0, 0], y[0, 96]) == int_range(ACT_BITS)[::-1]


# --- top-k and expert queues -----------------------------------------------------------------

def test_topk_ties_go_to_lower_index():
    idx, val = topk(np.array([[3, 5, 5, 1], [7, 7, 7, 7], [-2**31, -2**31, 0, -2**31]]), 2)
    assert idx.tolist() == [[1, 2], [0, 1], [2, 0]]
    assert val.tolist() == [[5, 5], [7, 7], [0, -2**31]]


def test_topk_matches_naive_reference():
    logits = rng.integers(-5, 5, (200, 16))                # many ties
    for k in (1, 2, 16):
        idx, _ = topk(logits, k)
        for row, got in zip(logits, idx):
            want = sorted(range(16), key=lambda e: (-row[e], e))[:k]
            assert list(got) == want


def test_expert_queues_match_naive_reference():
    idx = np.stack([rng.choice(8, 2, replace=False) for _ in range(50)])
    w = rng.integers(0, 2**15, idx.shape)
    q = build_expert_queues(idx, w, 8)
    for e in range(8):
        want = [(t, w[t, r]) for t in range(50) for r in range(2) if idx[t, r] == e]
        tokens, weights = q.queue(e)
        assert list(zip(tokens, weights)) == want
    assert list(q.active) == [e for e in range(8) if (idx == e).any()]


def test_expert_queues_empty_and_single_expert():
    q = build_expert_queues(np.zeros((5, 1), dtype=np.int64), np.arange(5)[:, None], 4)
    assert q.counts.tolist() == [5, 0, 0, 0] and q.active.tolist() == [0]
    assert q.queue(3)[0].size == 0
