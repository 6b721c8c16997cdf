"""One-pass integer LayerNorm, the spec of ``gateware/layernorm.py``.

For a row ``x`` of ``n`` int16 residual values (one token):

    S1 = sum(x), S2 = sum(x*x)                     (one pass, exact)
    V  = n*S2 - S1*S1 + eps_term                   (= n**2 * (var + eps) in residual LSB**2)
    R  = isqrt(2**(2*RSQRT_BITS) // V)             (= floor(2**RSQRT_BITS / sqrt(V)), exact)
    d  = n*x - S1                                  (= n * (x - mean))
    z  = rshift_round(d * R, RSQRT_BITS - Z_FRAC)  (normalised value, Z_FRAC fractional bits)
    y  = sat8(rshift_round(z * gamma + beta, Z_FRAC + affine_shift))

``gamma`` (int16 per channel) and ``beta`` (int32 per channel) fold the affine parameters and the
output scale: ``gamma_real / s_out ~= gamma * 2**-affine_shift``,
``beta_real / s_out ~= beta * 2**-(Z_FRAC + affine_shift)``. ``eps_term = round(n**2 * eps / s_res**2)``.
The division and integer square root happen once per row; hardware computes them sequentially.
"""

import math

import numpy as np

from .fixedpoint import ACT_BITS, RES_BITS, check_range, rshift_round, saturate

__all__ = ["RSQRT_BITS", "Z_FRAC", "GAMMA_BITS", "BETA_BITS", "layernorm_rsqrt", "layernorm"]

#: ``R = floor(2**RSQRT_BITS / sqrt(V))``.
RSQRT_BITS = 32
#: Fractional bits of the normalised value ``z``.
Z_FRAC = 12
#: Width of the folded gamma and beta.
GAMMA_BITS = 16
BETA_BITS = 32


def layernorm_rsqrt(v):
    """``floor(2**RSQRT_BITS / sqrt(v))`` per element, exactly, for integer ``v >= 1``."""
    v = np.asarray(v)
    out = np.empty(v.shape, dtype=np.int64)
    for idx, vi in np.ndenumerate(v):
        vi = int(vi)
        if vi < 1:
            raise ValueError("LayerNorm variance term must be positive (eps_term >= 1)")
        out[idx] = math.isqrt((1 << (2 * RSQRT_BITS)) // vi)
    return out


def layernorm(x, gamma, beta, affine_shift, eps_term, bits=ACT_BITS):
    """Normalise each row of int16 ``x`` (last axis) and return ``bits``-wide output."""
    x = check_range(x, RES_BITS, what="LayerNorm input")
    gamma = check_range(gamma, GAMMA_BITS, what="LayerNorm gamma")
    beta = check_range(beta, BETA_BITS, what="LayerNorm beta")
    if not 0 <= affine_shift <= 40:
        raise ValueError("LayerNorm affine_shift must lie in [0, 40]")
    n = x.shape[-1]
    s1 = x.sum(axis=-1)
    s2 = (x * x).sum(axis=-1)
    v = n * s2 - s1 * s1 + int(eps_term)
    r = layernorm_rsqrt(v)
    d = n * x - s1[..., None]
    z = rshift_round(d * r[..., None], RSQRT_BITS - Z_FRAC)
    return saturate(rshift_round(z * gamma + beta, Z_FRAC + affine_shift), bits)
