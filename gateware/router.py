"""MoE router: gate logits to per-token (experts, gate weights), the twin of
``golden.moe.route`` after the gate matmul, feeding ``gateware/expert_queue.py``."""

from fractions import Fraction
from types import SimpleNamespace

from amaranth.hdl import Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import REQUANT_MULT_BITS
from golden.mac_array import ACC_BITS
from golden.moe import GATE_FRAC

from .postprocess import PostProcess
from .softmax import Softmax
from .topk import TopK

__all__ = ["Router"]

#: Width of a gate weight on ``o``: probabilities reach 1.0 = 2**GATE_FRAC, one bit more.
_WEIGHT_BITS = GATE_FRAC + 1
#: With 3 row banks the softmax's per-row divider, not its row buffer, bounds the group rate.
_SOFTMAX_BANKS = 3
#: Selections queued for capture. The softmax frees a row bank a few cycles before its last
#: probability leaves and sees the input 8 cycles after TopK does (input register and
#: requantiser); without this slack TopK, not the softmax, would hold the next group back.
_SEL_DEPTH = 3
#: Groups whose last logit has entered but are not captured yet: one in the input register,
#: one in TopK's working lists, one in its output register, the rest queued as selections.
_META_DEPTH = _SEL_DEPTH + 3


class Router(wiring.Component):
    """``golden.moe.route`` from the gate logits on: top-k experts and their softmax weights.

    A group is ``lanes`` tokens; its gate logits arrive one expert per transfer, experts
    ``0 .. num_experts - 1`` in order. Every transfer goes both to a ``TopK`` (on the int32
    logits) and, through a ``PostProcess`` used as golden's ``requantize(logits, gate_mult,
    gate_shift, RES_BITS)`` (bias 0, no residual, 16-bit saturation), to a ``Softmax`` with
    ``out_frac = GATE_FRAC``. A one-entry register forks each transfer, so both branches stall
    independently.

    TopK's selections for a group wait in a short queue; the softmax's probabilities of a group
    are taken only while its selections head that queue (so no latency difference between the
    branches is relied on). As the softmax emits expert ``e``'s probabilities, each lane's ranks
    whose selected index is ``e`` capture them. The finished group moves to a shift register
    that emits its first ``valid_lanes`` tokens, one per transfer, while the next group is
    captured. The group's ``token_base``, ``valid_lanes`` and ``final`` travel from the input
    to the capture stage in a second queue.

    Parameters
    ----------
    lanes : int
        Tokens per group (the gate matmul's token lanes).
    num_experts : int
        Experts E: logits per token and transfers per group.
    k : int
        Experts selected per token, ``1 <= k <= num_experts``.
    max_tokens : int
        Largest token id plus one (a layer's token count bound).

    Attributes
    ----------
    i : In(stream.Signature(StructLayout({"logits": ArrayLayout(signed(32), lanes), "last": 1, "token_base": range(max_tokens), "valid_lanes": range(1, lanes + 1), "final": 1})))
        Expert ``e``'s gate logit for each lane's token; transfer ``e`` of a group is expert
        ``e``, and ``last`` marks expert ``num_experts - 1``. Lane ``j`` is token
        ``token_base + j``; only lanes ``0 .. valid_lanes - 1`` hold tokens (``valid_lanes`` is
        1..lanes; the others' logits are ignored); ``final`` marks the layer's last group.
        ``token_base``, ``valid_lanes`` and ``final`` are constant over a group's transfers
        (they are sampled with ``last``).
    gate_mult : In(unsigned(16))
        Requantisation multiplier of the gate logits into the softmax's log2 domain; held while
        a layer's logits are in flight.
    gate_shift : In(unsigned(6))
        Its rounding right shift, 0..62 as golden requires (63 gives 0, as in
        ``PostProcess``); held like ``gate_mult``.
    o : Out(stream.Signature(StructLayout({"token": range(max_tokens), "expert": ArrayLayout(range(num_experts), k), "weight": ArrayLayout(unsigned(16), k), "last": 1})))
        Exactly ``ExpertQueueBuilder(num_experts, max_tokens, k).i``'s payload: one token per
        transfer, in increasing order; ``expert`` its selections in rank order (golden
        ``topk``'s), ``weight[r]`` the softmax probability of ``expert[r]`` with ``GATE_FRAC``
        fractional bits (golden ``route``'s weights); ``last`` on the final group's last valid
        token.
    latency : int
        ``num_experts + 44``: when a group's ``last`` logit transfers on clock edge ``t`` and
        the pipeline is idle with ``o`` ready, its first token transfers on ``o`` at edge
        ``t + latency``, and the rest on the following edges. Input register 1, PostProcess 7,
        Softmax 36 (``Softmax.latency`` with ``fixed_period``), then the group's
        ``num_experts`` probability transfers; the last of them loads the output register.

    Throughput: ``i`` takes one transfer per ``Softmax.input_period`` (2) cycles, the rate of
    the softmax built with ``fixed_period`` (so the group's timing does not hang on where its
    logits set new maxima), while the branches have room. Back to back, with ``o`` ready, a
    group takes ``steady_period()`` cycles on average: ``max(Softmax.steady_period(num_experts),
    lanes)``; the softmax's input, 2 cycles per expert, dominates for the default 16 experts and
    16 lanes (16 tokens per 32 cycles); for fewer than 14 experts its per-row divider's 28
    cycles do.
    """

    def __init__(self, lanes, num_experts, k, max_tokens):
        if lanes < 1 or max_tokens < 1:
            raise ValueError("lanes and max_tokens must be positive")
        if not 1 <= k <= num_experts:
            raise ValueError(f"the router needs 1 <= k <= num_experts, got k={k}, "
                             f"num_experts={num_experts}")
        self.lanes, self.num_experts, self.k, self.max_tokens = lanes, num_experts, k, max_tokens
        # Built here for its timing figures (``latency``, ``steady_period``), used in elaborate.
        self._softmax = Softmax(lanes, num_experts, GATE_FRAC, banks=_SOFTMAX_BANKS,
                                fixed_period=True)
        self.latency = num_experts + 1 + PostProcess.latency + self._softmax.latency
        self._meta = data.StructLayout({
            "token_base": range(max_tokens),
            "valid_lanes": range(1, lanes + 1),
            "final": 1,
        })
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "logits": data.ArrayLayout(signed(ACC_BITS), lanes),
                "last": 1,
                **{name: field.shape for name, field in self._meta},
            }))),
            "gate_mult": In(unsigned(REQUANT_MULT_BITS)),
            "gate_shift": In(unsigned(6)),
            "o": Out(stream.Signature(data.StructLayout({
                "token": range(max_tokens),
                "expert": data.ArrayLayout(range(num_experts), k),
                "weight": data.ArrayLayout(unsigned(_WEIGHT_BITS), k),
                "last": 1,
            }))),
        })

    def steady_period(self):
        """Average cycles per group for back-to-back groups with ``o`` always ready.

        The larger of the softmax's group rate (``Softmax.steady_period``; the input's
        ``num_experts`` cycles are part of it) and the serialiser's ``lanes`` tokens.
        """
        return max(self._softmax.steady_period(self.num_experts), Fraction(self.lanes))

    def elaborate(self, platform):
        m = Module()
        m.submodules.topk = topk = TopK(self.lanes, self.num_experts, self.k)
        m.submodules.requant = requant = PostProcess(self.lanes)
        m.submodules.softmax = softmax = self._softmax
        m.submodules.meta = meta_q = fifo.SyncFIFOBuffered(width=Shape.cast(self._meta).width,
                                                           depth=_META_DEPTH)
        self._fork(m, topk, requant, softmax, meta_q)
        index = topk.o.payload.shape()["index"].shape
        # The serialiser: a shift register whose lane 0 is the token on ``o``.
        ser = SimpleNamespace(
            valid=Signal(), left=Signal(range(self.lanes + 1)), token=Signal(range(self.max_tokens)),
            final=Signal(), index=Signal(index), free=Signal(), lane_last=Signal(),
            w=Signal(data.ArrayLayout(data.ArrayLayout(unsigned(_WEIGHT_BITS), self.k),
                                      self.lanes)))
        finish, sel_index, sel_meta = self._capture(m, topk, softmax.o, meta_q, ser)
        self._serialise(m, ser, finish, sel_index, sel_meta)
        return m

    def _fork(self, m, topk, requant, softmax, meta_q):
        """One input register, a pending flag per branch; the group's fields into ``meta_q``."""
        p = self.i.payload
        fork_logits = Signal.like(p.logits)
        fork_last = Signal()
        pend_tk = Signal()
        pend_rq = Signal()
        accept = Signal()
        # The softmax takes one logit per ``input_period`` cycles. Pacing the input to that rate
        # keeps the requantiser from backing up, so every logit reaches the softmax the same
        # number of cycles after its transfer (and ``latency`` holds for any ``num_experts``).
        rest = Signal(range(softmax.input_period))
        with m.If(accept):
            m.d.sync += rest.eq(softmax.input_period - 1)
        with m.Elif(rest != 0):
            m.d.sync += rest.eq(rest - 1)
        m.d.comb += [
            self.i.ready.eq((~pend_tk | topk.i.ready) & (~pend_rq | requant.i.ready)
                            & meta_q.w_rdy & (rest == 0)),
            accept.eq(self.i.valid & self.i.ready),
            topk.i.valid.eq(pend_tk),
            topk.i.payload.logits.eq(fork_logits),
            topk.i.payload.last.eq(fork_last),
            requant.i.valid.eq(pend_rq),
            requant.i.payload.acc.eq(fork_logits),
            requant.i.payload.bias.eq(0),
            requant.i.payload.mult.eq(self.gate_mult),
            requant.i.payload.shift.eq(self.gate_shift),
            requant.i.payload.add_residual.eq(0),
            requant.i.payload.narrow.eq(0),
            requant.i.payload.last.eq(fork_last),
            softmax.i.valid.eq(requant.o.valid),
            softmax.i.payload.u.eq(requant.o.payload.data),
            softmax.i.payload.last.eq(requant.o.payload.last),
            requant.o.ready.eq(softmax.i.ready),
        ]
        with m.If(accept):
            m.d.sync += [fork_logits.eq(p.logits), fork_last.eq(p.last),
                         pend_tk.eq(1), pend_rq.eq(1)]
        with m.Else():
            with m.If(topk.i.ready):
                m.d.sync += pend_tk.eq(0)
            with m.If(requant.i.ready):
                m.d.sync += pend_rq.eq(0)

        meta_in = Signal(self._meta)
        m.d.comb += [
            meta_in.token_base.eq(p.token_base),
            meta_in.valid_lanes.eq(p.valid_lanes),
            meta_in.final.eq(p.final),
            meta_q.w_data.eq(meta_in),
            meta_q.w_en.eq(accept & p.last),
        ]

    def _capture(self, m, topk, sm, meta_q, ser):
        """Probabilities into the ranks that selected their expert; the finished group into
        ``ser``. Returns the completing transfer and the group's selections and fields."""
        # The heads of the two queues are the group being captured; both pop when it completes.
        index = topk.o.payload.shape()["index"].shape
        m.submodules.sel = sel_q = fifo.SyncFIFOBuffered(width=Shape.cast(index).width,
                                                         depth=_SEL_DEPTH)
        sel_index = index(sel_q.r_data)
        m.d.comb += [
            sel_q.w_data.eq(topk.o.payload.index),
            sel_q.w_en.eq(topk.o.valid),
            topk.o.ready.eq(sel_q.w_rdy),
        ]
        expert = Signal(range(self.num_experts))
        cap_w = Signal.like(ser.w)
        sm_take = Signal()
        finish = Signal()
        m.d.comb += [
            ser.lane_last.eq(ser.left == 1),
            ser.free.eq(~ser.valid | (self.o.ready & ser.lane_last)),
            # Only with the group's selections in place may its probabilities be taken; the last
            # one also needs the serialiser free, as it completes the group there.
            sm.ready.eq(sel_q.r_rdy & meta_q.r_rdy & (~sm.payload.last | ser.free)),
            sm_take.eq(sm.valid & sm.ready),
            finish.eq(sm_take & sm.payload.last),
            sel_q.r_en.eq(finish),
            meta_q.r_en.eq(finish),
        ]
        with m.If(sm_take):
            m.d.sync += expert.eq(Mux(sm.payload.last, 0, expert + 1))

        for lane in range(self.lanes):
            for r in range(self.k):
                hit = sel_index[lane][r] == expert
                with m.If(sm_take & hit):
                    m.d.sync += cap_w[lane][r].eq(sm.payload.p[lane])
                with m.If(finish):
                    m.d.sync += ser.w[lane][r].eq(Mux(hit, sm.payload.p[lane], cap_w[lane][r]))
        return finish, sel_index, self._meta(meta_q.r_data)

    def _serialise(self, m, ser, finish, sel_index, sel_meta):
        """The finished group's first ``valid_lanes`` tokens on ``o``, one per transfer."""
        m.d.comb += [
            self.o.valid.eq(ser.valid),
            self.o.payload.token.eq(ser.token),
            self.o.payload.expert.eq(ser.index[0]),
            self.o.payload.weight.eq(ser.w[0]),
            self.o.payload.last.eq(ser.final & ser.lane_last),
        ]
        with m.If(finish):
            m.d.sync += [
                ser.valid.eq(1),
                ser.left.eq(sel_meta.valid_lanes),
                ser.token.eq(sel_meta.token_base),
                ser.final.eq(sel_meta.final),
                ser.index.eq(sel_index),
            ]
        with m.Elif(self.o.valid & self.o.ready):
            m.d.sync += [
                ser.left.eq(ser.left - 1),
                ser.token.eq(ser.token + 1),
                ser.valid.eq(~ser.lane_last),
            ]
            for lane in range(self.lanes - 1):
                m.d.sync += [ser.index[lane].eq(ser.index[lane + 1]),
                             ser.w[lane].eq(ser.w[lane + 1])]
