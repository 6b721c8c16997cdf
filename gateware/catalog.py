"""The compute units at their default sizes, by name, for synthesis reports and benchmarks.

Default sizes are those of a 16-token-lane build for the edge-moe config: a 16 x 16 MAC array,
vector units 16 lanes wide, rows up to 192 features (LayerNorm) or 129 keys (softmax), 16 experts;
the AXI4-Lite control registers at their defaults (4 KiB window, 40-bit base addresses), the DMA
(40-bit addresses, 128-bit data, bursts of 256, 4 outstanding) and the abort control.
"""

from model.config import get_config

__all__ = ["LANES", "UNITS", "build_unit"]

LANES = 16


def _units():
    cfg = get_config("edge-moe")

    def mac_array():
        from .mac_array import MACArray
        return MACArray(LANES, LANES)

    def postprocess():
        from .postprocess import PostProcess
        return PostProcess(LANES)

    def softmax():
        from .softmax import Softmax
        return Softmax(LANES, cfg.tokens, 8)

    def gelu():
        from .gelu import GELU
        return GELU(LANES)

    def layernorm():
        from .layernorm import LayerNorm
        return LayerNorm(LANES, cfg.dim)

    def topk():
        from .topk import TopK
        return TopK(LANES, cfg.num_experts, cfg.top_k)

    def expert_queue():
        from .expert_queue import ExpertQueueBuilder
        return ExpertQueueBuilder(cfg.num_experts, cfg.tokens, cfg.top_k)

    def routing():
        from .routing import RoutingRecorder
        return RoutingRecorder(cfg.tokens, cfg.num_experts, cfg.top_k)

    def control():
        from .control import ControlRegisters
        return ControlRegisters()

    def dma():
        from .dma import DMA
        return DMA()

    def abort():
        from .abort import AbortControl
        return AbortControl(40)

    return {f.__name__: f for f in (mac_array, postprocess, softmax, gelu, layernorm, topk, expert_queue,
                                    routing, control, dma, abort)}


#: Unit name -> zero-argument factory.
UNITS = _units()


def build_unit(name):
    """Instantiate unit ``name`` at its default size; ``KeyError`` names the choices."""
    try:
        return UNITS[name]()
    except KeyError:
        raise KeyError(f"unknown unit {name!r}; choose one of {', '.join(UNITS)} or all") from None
