"""The whole accelerator: sequencer, on-chip buffers, the MAC array and the vector units, DMA.

The sequencer runs the program of ``gateware/program.py`` (compiled from the config and the
quantised artifact) one instruction at a time. Matrix products are cut into *tiles*: a block of
``lanes`` tokens by a block of ``cols`` output channels, over the whole inner dimension. For each
tile the sequencer pushes one descriptor into the queue of every unit the phase uses; the units
then run on their own, joined only by their streams:

- the A reader streams the tile's activations (``lanes`` tokens per element, through a
  transposer, from any token list: a range or an expert's queue) or, for A.V, the probabilities;
- the W reader streams the weights from a double-buffered tile buffer that the fetcher fills from
  DRAM (one tile ahead), or K/V from the activation memory for attention;
- the MAC array multiplies; its columns (one output channel each) go to the post-processor with
  per-channel bias/multiplier/shift and, for residual adds, the old value read back by the
  residual reader; then to GELU, the softmax (into the probability buffer), the router (gate
  logits to top-k and the expert queues), or the MoE combine;
- the writer turns columns back into token words and stores them.

A phase (an instruction, or one part of ATTENTION and MOE) ends at a barrier: the sequencer waits
until every tile it issued has retired before it changes the routing for the next phase.
MoE runs expert by expert over the queues built from the gate: the sequencer asks the queue
builder for the next active expert, loads its queue, and runs fc1 (with GELU) on the queued
tokens and fc2 into a wide accumulator; after the last expert, the accumulator is rounded into
the residual stream. Experts without tokens are never fetched.

Each piece is a component in its own file: ``sequencer.py`` (with the phase settings and
descriptors of ``phase.py``), ``activations.py``, ``fetcher.py`` (the weight-tile double
buffer), ``reader.py`` (the A and W readers, one component twice), ``residual.py``,
``columns.py`` (router feed, post-processor, GELU, softmax) and ``writer.py`` (with the MoE
combine); the DRAM records they read are the layouts of ``records.py``.
"""

import dataclasses

from amaranth import Cat, Module, ResetInserter, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.attention import PROB_FRAC
from golden.fixedpoint import ACT_BITS

from .abort import AbortControl
from .activations import ActivationStore
from .axi import AXI4LiteSignature, AXI4Signature
from .columns import ColumnPath
from .control import ControlRegisters
from .dma import DMA
from .expert_queue import ExpertQueueBuilder
from .fetcher import TileFetcher
from .kv_buffers import KVBuffers
from .layernorm import LayerNorm
from .mac_array import MACArray
from .phase import AMode, Fetch, Phase, Sink, Tile, Trace, WMode
from .program import Capacity
from .reader import TileReader, Walk
from .records import ADDR_BITS, BEAT_BYTES
from .residual import ResidualReader
from .router import Router
from .routing import RoutingRecorder
from .sequencer import Sequencer
from .skid_buffer import SkidBuffer
from .stream_queue import StreamQueue
from .writer import Writer

__all__ = ["Accelerator"]

DATA_WIDTH = 8 * BEAT_BYTES
#: Tile descriptors the sequencer may issue ahead of each unit. A weight tile is fetched when its
#: first tile is issued, so this lead must cover a fetch: with 4, a 16 x 64 array stalled on about
#: 440 cycles of every 800-beat tile (the fetch queued only ~2 token tiles ahead of its use).
DESCRIPTOR_DEPTH = 16
#: The phase's mode tests the datapath's handshakes read, registered beside its copy of the phase.
_PhaseFlags = data.StructLayout({"layernorm": 1, "ln_a": 1, "a_words": 1, "a_probs": 1, "w_tile": 1,
                                 "w_direct": 1})


class Accelerator(wiring.Component):
    """The M3ViT accelerator, AXI4 manager to DRAM and AXI4-Lite control.

    Parameters
    ----------
    cap : Capacity
        Sizes of the on-chip memories and the ``lanes`` x ``cols`` array
        (``gateware.program.Capacity``); the default is the board's build, ``Capacity.board()``.

    Attributes
    ----------
    axi : Out(AXI4Signature(addr_width=40, data_width=128))
        Weights, program and image in; features and each MoE layer's expert routing out.
    axi1, axi2, axi3 : Out(AXI4Signature(addr_width=40, data_width=128))
        With ``cap.ports`` above 1, ports ``1 .. ports - 1``: weight-tile reads only (each
        streams its banks of every tile, ``gateware/fetcher.py``). Their write channels are idle
        but present, so every port is a whole AXI4 manager (the board wires each to an HP port).
    ctrl : In(AXI4LiteSignature(addr_width=12, data_width=32))
        ``gateware.control.ControlRegisters``: start, soft reset, busy/done/error, task, base
        addresses, watchdog, error code and address, cycle and stall counters. A stall cycle is
        one in which the MAC array waits for a weight tile that DRAM has not delivered yet.
    trace : Out(gateware.phase.Trace)
        What a simulation watches to draw the frame's timeline; unconnected on the board.

    A bus error on any port, the watchdog or a soft reset stops the frame through
    ``gateware.abort``: every DMA drains its bus, then every component but the register block
    is reset. ERROR_ADDR names the lowest-numbered port's fault when two come together.
    """

    def __init__(self, cap=None):
        self.cap = cap = cap or Capacity.board()
        self.lanes = cap.lanes
        self.kmax = cap.max_k_chunks * cap.lanes
        self.port_names = ["axi"] + [f"axi{p}" for p in range(1, cap.ports)]
        super().__init__({
            **{name: Out(AXI4Signature(addr_width=ADDR_BITS, data_width=DATA_WIDTH)) for name in self.port_names},
            "ctrl": In(AXI4LiteSignature(addr_width=12, data_width=32)),
            "trace": Out(Trace),
        })

    @property
    def axi_ports(self):
        """The AXI4 managers, port 0 first."""
        return [getattr(self, name) for name in self.port_names]

    def elaborate(self, platform):
        m = Module()
        cap, N = self.cap, self.lanes
        m.submodules.regs = regs = ControlRegisters(addr_width=12, base_width=ADDR_BITS,
                                                    capacity=dataclasses.asdict(cap))
        wiring.connect(m, wiring.flipped(self.ctrl), regs.bus)
        # Everything but the register block and the abort control is the datapath: an abort
        # (bus error, watchdog, soft reset) resets it once the DMA has drained the bus.
        m.submodules.abort = abort = AbortControl(ADDR_BITS)
        datapath = ResetInserter(abort.reset)
        # One DMA per port; those past port 0 only read (their write commands stay idle).
        dmas = [DMA(addr_width=ADDR_BITS, data_width=DATA_WIDTH) for _ in self.port_names]
        for name, port, dma in zip(self.port_names, self.axi_ports, dmas):
            m.submodules[name.replace("axi", "dma")] = datapath(dma)
            wiring.connect(m, wiring.flipped(port), dma.axi)

        C, G = cap.cols, cap.groups
        mac = MACArray(N, C)
        m.submodules.mac = datapath(mac)
        ln = LayerNorm(N, cap.max_dim_chunks * N)
        m.submodules.layernorm = datapath(ln)
        router = Router(N, cap.num_experts, cap.top_k, cap.max_tokens)
        m.submodules.router = datapath(router)
        queues = ExpertQueueBuilder(cap.num_experts, cap.max_tokens, cap.top_k)
        m.submodules.queues = datapath(queues)
        wiring.connect(m, router.o, queues.i)
        # The routing recorder watches the router's tokens go into the queues; ROUTES writes them out.
        routing = RoutingRecorder(cap.max_tokens, cap.num_experts, cap.top_k, BEAT_BYTES)
        m.submodules.routing = datapath(routing)
        m.d.comb += [routing.i.valid.eq(router.o.valid & router.o.ready),
                     routing.i.payload.token.eq(router.o.payload.token),
                     routing.i.payload.expert.eq(router.o.payload.expert),
                     routing.i.payload.last.eq(router.o.payload.last)]

        seq = Sequencer(cap, queues=queues.signature,
                        ln_params=ln.signature.members["params"].signature)
        m.submodules.seq = datapath(seq)
        store = ActivationStore(N, cap.act_words)
        m.submodules.store = datapath(store)
        m.submodules.probs = probs = Memory(shape=data.ArrayLayout(unsigned(PROB_FRAC + 1), N),
                                            depth=cap.probs_blocks * cap.probs_stride, init=[])
        probs_rd, probs_wr = probs.read_port(), probs.write_port()
        fetcher = TileFetcher(C, self.kmax, cap.ports)
        m.submodules.fetcher = datapath(fetcher)
        ra = TileReader(N, slot_words=cap.probs_stride)     # a row group of the probabilities
        m.submodules.a_reader = datapath(ra)
        rw = TileReader(N, groups=G, pack=fetcher.pack, slot_words=self.kmax, lane_bits=ACT_BITS)
        m.submodules.w_reader = datapath(rw)
        res = ResidualReader(N, G)
        m.submodules.residual = datapath(res)
        m.submodules.kv = kv = KVBuffers(cap)
        cols = ColumnPath(N, cap.max_tokens, cols=C,
                          router=router.signature.members["i"].signature.flip(),
                          ln=ln.signature.members["o"].signature)
        m.submodules.columns = datapath(cols)
        writer = Writer(cap)
        m.submodules.writer = datapath(writer)

        self._descriptor_queues(m, datapath, seq, ra, rw, cols, res, writer, fetcher)
        m.d.comb += [seq.a_busy.eq(ra.tiles.valid), seq.fetch_idle.eq(fetcher.idle),
                     fetcher.weights_base.eq(regs.weights_base)]

        self._control(m, regs, dmas[0], seq, queues, ln)
        self._abort(m, regs, abort, dmas, seq)
        self._dma_read(m, dmas, seq, fetcher)
        q_a, q_o = self._queue_memory(m, seq)
        ph, flags = self._data_phase(m, seq)
        self._readers(m, ph, flags, ra, rw, store, fetcher, kv, probs_rd, q_a, seq)
        self._probs_gate(m, flags, ra, cols, seq)
        # The readers' outputs pass skid buffers, so that their reads and walks do not wait on
        # the join's test of both operands (a path of 11 levels into the W reader's walk).
        a_out, w_out = SkidBuffer(ra.o.payload.shape()), SkidBuffer(rw.o.payload.shape())
        m.submodules.a_out = datapath(a_out)
        m.submodules.w_out = datapath(w_out)
        wiring.connect(m, ra.o, a_out.i)
        wiring.connect(m, rw.o, w_out.i)
        # LayerNorm's rows go through a skid buffer to the column path (a LAYERNORM) or to the
        # MAC array (a GEMM through LayerNorm): the consumer's handshake does not reach back into
        # LayerNorm's pass-2 read control and its row start (9 levels into its element index
        # on the board top).
        ln_out = SkidBuffer(ln.o.payload.shape())
        m.submodules.ln_out = datapath(ln_out)
        wiring.connect(m, ln.o, ln_out.i)
        self._join(m, seq, flags, a_out.o, w_out.o, ln_out.o, mac, ln, cols)
        self._results(m, seq, ph, store, fetcher, res, cols, writer, probs_wr, q_o)
        wiring.connect(m, writer.kv_write, kv.write)
        self._column_feeds(m, datapath, mac, cols, router)
        wiring.connect(m, routing.o, seq.routes)
        wiring.connect(m, res.o, cols.residual)
        wiring.connect(m, cols.o, writer.i)
        m.d.comb += [self.trace.busy.eq(seq.busy), self.trace.at.eq(seq.position), self.trace.sink.eq(seq.phase.sink),
                     self.trace.mac.eq(mac.i.valid & mac.i.ready), self.trace.stall.eq(seq.stall)]
        m.d.comb += [router.gate_mult.eq(fetcher.gate_mult), router.gate_shift.eq(fetcher.gate_shift)]
        return m

    @staticmethod
    def _descriptor_queues(m, datapath, seq, ra, rw, cols, res, writer, fetcher):
        """The descriptor queues, sequencer -> units."""
        queues_to = (("aq", seq.a_tile, ra.tiles, Tile), ("wq", seq.w_tile, rw.tiles, Tile),
                     ("cq", seq.c_tile, cols.tiles, Tile), ("rq", seq.r_tile, res.tiles, Tile),
                     ("oq", seq.o_tile, writer.tiles, Tile), ("fq", seq.fetch, fetcher.fetch, Fetch))
        # Both sides of each queue are registers (``StreamQueue``), so the sequencer's issue
        # reaches no queue level and no unit's handshake reaches the sequencer.
        for name, source, sink, shape in queues_to:
            q = StreamQueue(shape, depth=DESCRIPTOR_DEPTH)
            m.submodules[name] = datapath(q)
            wiring.connect(m, source, q.i)
            wiring.connect(m, q.o, sink)

    @staticmethod
    def _data_phase(m, seq):
        """The readers, the join into the array and the column path see the phase a cycle after
        the sequencer sets it, with its mode tests as flags: their handshakes then start at
        registers, not behind a decode of the phase (paths of 9-10 levels on the board top).
        Their first tile comes three cycles after its phase is set (the descriptor queues'
        latency), so they never act on the lagging copy. Returns ``(phase, flags)``."""
        ph, flags = Signal(Phase, name="data_phase"), Signal(_PhaseFlags, name="data_phase_flags")
        live = seq.phase
        m.d.sync += [ph.eq(live), flags.layernorm.eq(live.sink == Sink.LAYERNORM),
                     flags.ln_a.eq(live.a.ln),
                     flags.a_words.eq(live.a.mode == AMode.WORDS), flags.a_probs.eq(live.a.mode == AMode.PROBS),
                     flags.w_tile.eq(live.w.mode == WMode.TILE), flags.w_direct.eq(live.w.mode == WMode.DIRECT)]
        return ph, flags

    @staticmethod
    def _column_feeds(m, datapath, mac, cols, router):
        """The MAC array's columns into the column path, which feeds the router."""
        wiring.connect(m, mac.o, cols.i)
        m.d.comb += mac.skip_rest.eq(cols.skip_rest)
        # The router takes its columns through a queue registered on both sides: its top-k's
        # readiness does not reach the column handshake and the MAC array's drain, nor the
        # column path's tests of its tile the router's bookkeeping (9 levels each way).
        router_in = StreamQueue(router.i.payload.shape(), depth=4)
        m.submodules.router_in = datapath(router_in)
        wiring.connect(m, cols.router, router_in.i)
        wiring.connect(m, router_in.o, router.i)

    @staticmethod
    def _control(m, regs, dma, seq, queues, ln):
        """The sequencer's own connections: registers, queue builder, LayerNorm, DMA writes."""
        m.d.comb += [seq.start.eq(regs.start), seq.task.eq(regs.task), seq.weights_base.eq(regs.weights_base),
                     seq.image_base.eq(regs.image_base), seq.output_base.eq(regs.output_base),
                     regs.cycles.eq(seq.cycles),
                     regs.stalls.eq(seq.stalls)]
        wiring.connect(m, seq.experts, queues.experts)
        wiring.connect(m, seq.read, queues.read)
        m.d.comb += seq.read_count.eq(queues.read_count)
        wiring.connect(m, seq.queue, queues.queue)
        m.d.comb += queues.clear.eq(seq.clear)
        wiring.connect(m, seq.ln_params, ln.params)
        m.d.comb += [ln.affine_shift.eq(seq.phase.ln_shift), ln.eps_term.eq(seq.phase.ln_eps)]
        wiring.connect(m, seq.wr_cmd, dma.wr_cmd)
        wiring.connect(m, seq.wr_data, dma.wr_data)
        m.d.comb += seq.wr_busy.eq(dma.wr_busy)

    @staticmethod
    def _abort(m, regs, abort, dmas, seq):
        """The abort path's connections: causes in, halt to every DMA, status out."""
        error = Cat(dma.error for dma in dmas).any()
        m.d.comb += [abort.start.eq(regs.start), abort.soft_reset.eq(regs.soft_reset), abort.busy.eq(seq.busy),
                     abort.watchdog.eq(regs.watchdog), abort.dma_error.eq(error),
                     abort.dma_drained.eq(Cat(dma.drained for dma in dmas).all()),
                     regs.busy.eq(seq.busy | abort.aborting),
                     # A frame that faulted reports the abort's done, never the sequencer's: its
                     # END can come while the DMA's error waits to be taken up (a write's last B).
                     regs.done.eq((seq.done & ~error & ~abort.halt) | abort.done),
                     regs.error.eq(abort.error), regs.aborting.eq(abort.aborting),
                     regs.error_code.eq(abort.code), regs.error_addr.eq(abort.addr)]
        m.d.comb += [dma.halt.eq(abort.halt) for dma in dmas]
        # The first port with a fault names it; the abort latches it in the cycle it comes.
        for dma in reversed(dmas):
            with m.If(dma.error):
                m.d.comb += [abort.dma_error_write.eq(dma.error_write), abort.dma_error_resp.eq(dma.error_resp),
                             abort.dma_error_addr.eq(dma.error_addr)]

    @staticmethod
    def _dma_read(m, dmas, seq, fetcher):
        """The DMA read channels: port 0's the sequencer's while it owns it (no tiles in flight),
        else the fetcher's; the other ports' always the fetcher's."""
        for dma, cmd, rdata in list(zip(dmas, fetcher.rd_cmd, fetcher.rd_data))[1:]:
            wiring.connect(m, cmd, dma.rd_cmd)
            wiring.connect(m, dma.rd_data, rdata)
        dma, owner = dmas[0], seq.dma_owner
        cmd, rdata = fetcher.rd_cmd[0], fetcher.rd_data[0]
        for port_cmd, port_data, mine in ((seq.rd_cmd, seq.rd_data, owner), (cmd, rdata, ~owner)):
            m.d.comb += [port_cmd.ready.eq(dma.rd_cmd.ready & mine), port_data.valid.eq(dma.rd_data.valid & mine),
                         port_data.payload.eq(dma.rd_data.payload)]
        with m.If(owner):
            m.d.comb += [dma.rd_cmd.valid.eq(seq.rd_cmd.valid), dma.rd_cmd.payload.eq(seq.rd_cmd.payload),
                         dma.rd_data.ready.eq(seq.rd_data.ready)]
        with m.Else():
            m.d.comb += [dma.rd_cmd.valid.eq(cmd.valid), dma.rd_cmd.payload.eq(cmd.payload),
                         dma.rd_data.ready.eq(rdata.ready)]

    def _queue_memory(self, m, seq):
        """The current expert's queue: written by the sequencer, read by the A reader and the combine."""
        entry = data.StructLayout({"token": range(self.cap.max_tokens), "weight": 16})
        m.submodules.qmem = qmem = Memory(shape=entry, depth=self.cap.max_tokens, init=[])
        q_a, q_o, q_wr = qmem.read_port(domain="comb"), qmem.read_port(domain="comb"), qmem.write_port()
        w = seq.queue_write
        m.d.comb += [q_wr.en.eq(w.valid), q_wr.addr.eq(w.payload.addr), q_wr.data.token.eq(w.payload.token),
                     q_wr.data.weight.eq(w.payload.weight)]
        return q_a, q_o

    def _readers(self, m, ph, flags, ra, rw, store, fetcher, kv, probs_rd, q_a, seq):
        """The A reader on the activations or the probability buffer, the W reader on the
        weight buffer or the attention buffers, each walking as the phase says."""
        N, C = self.lanes, self.cap.cols
        m.d.comb += [store.a.en.eq(ra.mem_en), probs_rd.en.eq(ra.mem_en), store.a.addr.eq(ra.mem_addr),
                     probs_rd.addr.eq(ra.mem_addr), q_a.addr.eq(ra.list_addr), ra.list_token.eq(q_a.data.token)]
        m.d.comb += [kv.read_en.eq(rw.mem_en), fetcher.w_en.eq(rw.mem_en), kv.read_addr.eq(rw.mem_addr),
                     fetcher.w_addr.eq(rw.mem_addr), kv.read_v.eq(flags.w_direct)]
        # The walks are registered from the sequencer's phase, level with the phase copy.
        for reader, walk_of in ((ra, _a_walk), (rw, _w_walk)):
            walk = Signal(Walk)
            walk_of(m, seq.phase, walk)
            m.d.sync += reader.walk.eq(walk)
        with m.If(flags.a_probs):
            m.d.comb += [ra.mem_data[i].eq(probs_rd.data[i]) for i in range(N)]
        with m.Else():
            m.d.comb += ra.mem_data.eq(store.a.data)
        w_t = rw.tiles.payload
        with m.If(flags.w_tile):
            ready = fetcher.readable.bit_select(w_t.slot, 1)
            m.d.comb += [rw.go.eq(ready), seq.stall.eq(rw.tiles.valid & ~ready)]
            with m.If(rw.tiles.ready & w_t.release):
                m.d.comb += fetcher.spend.eq(1 << w_t.slot)
            for i in range(C):
                m.d.comb += rw.mem_data[i].eq(fetcher.w_data.as_value().word_select(rw.sub * C + i, 8).as_signed()
                                              if fetcher.pack > 1 else fetcher.w_data[i])
        with m.Else():
            m.d.comb += [rw.go.eq(1), rw.mem_data.eq(kv.read_data)]

    def _probs_gate(self, m, flags, ra, cols, seq):
        """A.V's reads of the probability buffer wait for each word to be written, so that A.V
        streams behind the softmax's pass 2 instead of after it. The buffer holds a row group
        per query block, written in block order: a tile's reads go once its block's group is
        complete, or up to the words written of the group being written. (Each column block of
        A.V reads every word; the first waits, the others find the group complete.)"""
        cap = self.cap
        complete = Signal(range(cap.probs_blocks + 1))        # row groups written whole
        written = Signal(range(cap.max_tokens + 1))           # words of the next one
        pw = cols.probs_write
        with m.If(seq.probs_arm):
            m.d.sync += [complete.eq(0), written.eq(0)]
        with m.Elif(pw.valid):
            m.d.sync += written.eq(written + 1)
            with m.If(pw.payload.last):
                m.d.sync += [complete.eq(complete + 1), written.eq(0)]
        block = ra.tiles.payload.tb
        m.d.comb += ra.go.eq(~flags.a_probs | (block < complete) | (block == complete) & (ra.position < written))

    def _join(self, m, seq, flags, a_out, w_out, ln_out, mac, ln, cols):
        """The A and W streams into the MAC array, A alone into LayerNorm or to the store; a
        GEMM through LayerNorm takes LayerNorm's rows as its A operand."""
        # The MAC array wants its operands from registers; the transposers, read stages and
        # skid buffers are.
        N = self.lanes
        with m.If(flags.layernorm | flags.ln_a):
            m.d.comb += [ln.i.valid.eq(a_out.valid), a_out.ready.eq(ln.i.ready),
                         ln.i.payload.last.eq(a_out.payload.last)]
            m.d.comb += [ln.i.payload.x[i].eq(a_out.payload.data[i]) for i in range(N)]

        def operands(a, a_data):
            both = a.valid & w_out.valid
            m.d.comb += [mac.i.valid.eq(both), a.ready.eq(both & mac.i.ready),
                         w_out.ready.eq(both & mac.i.ready), mac.i.payload.last.eq(a.payload.last)]
            m.d.comb += [mac.i.payload.a[i].eq(a_data[i]) for i in range(N)]
            m.d.comb += [mac.i.payload.w[i].eq(w_out.payload.data[i]) for i in range(self.cap.cols)]

        with m.If(flags.layernorm):
            m.d.comb += [cols.ln.valid.eq(ln_out.valid), ln_out.ready.eq(cols.ln.ready),
                         cols.ln.payload.eq(ln_out.payload)]
        with m.Elif(flags.ln_a):
            operands(ln_out, ln_out.payload.y)
        with m.Elif(~flags.a_words):
            operands(a_out, a_out.payload.data)
        with m.Else():
            # STORE16: the sequencer takes the words to the DMA.
            m.d.comb += [seq.store.valid.eq(a_out.valid), seq.store.payload.eq(a_out.payload),
                         a_out.ready.eq(seq.store.ready)]

    def _results(self, m, seq, data_phase, store, fetcher, res, cols, writer, probs_wr, q_o):
        """Residual reader, column path and writer: their settings, memories and retirements.
        The column path takes the datapath's phase copy; the residual reader and the writer the
        sequencer's own, which the MoE combine's last pass uses from the cycle it is set."""
        ph = seq.phase
        m.d.comb += [res.dest.eq(ph.d), res.final.eq(seq.final), store.r.addr.eq(res.mem_addr),
                     store.r.en.eq(res.mem_en), res.mem_data.eq(store.r.data)]
        m.d.comb += [cols.phase.eq(data_phase), fetcher.param_slot.eq(cols.param_slot), fetcher.param_col.eq(cols.param_col),
                     cols.param.eq(fetcher.param), fetcher.release.eq(cols.release),
                     fetcher.capture_gate.eq(ph.sink == Sink.ROUTER),
                     cols.probs_arm.eq(seq.probs_arm), seq.scores_pending.eq(cols.scores_pending)]
        m.d.comb += [probs_wr.en.eq(cols.probs_write.valid), probs_wr.addr.eq(cols.probs_write.payload.addr),
                     probs_wr.data.eq(cols.probs_write.payload.data)]
        m.d.comb += [writer.dest.eq(ph.d), writer.kv.eq(ph.kv),
                     writer.combine.eq(ph.sink == Sink.COMBINE), writer.final.eq(seq.final),
                     writer.residual.eq(store.r.data), q_o.addr.eq(writer.list_addr),
                     writer.list_token.eq(q_o.data.token), writer.list_weight.eq(q_o.data.weight),
                     seq.retire.eq(cols.retire | writer.retire)]
        # LOAD16 and LOAD_PATCHES write the activation memory while no tile is in flight, which
        # is while the sequencer owns port 0: that register picks the writes' source, not the
        # sequencer's write (behind the DMA's read beats, 9 levels into the memory's data).
        m.d.comb += store.write.valid.eq(seq.act_write.valid | writer.act_write.valid)
        with m.If(seq.dma_owner):
            m.d.comb += store.write.payload.eq(seq.act_write.payload)
        with m.Else():
            m.d.comb += store.write.payload.eq(writer.act_write.payload)


def _a_walk(m, ph, walk):
    """The A reader's walk in each phase: activations (token rows or the expert's list), the
    probability buffer, or region words for the store."""
    a = ph.a
    with m.Switch(a.mode):
        with m.Case(AMode.ROWS, AMode.LIST):
            m.d.comb += [walk.transposed.eq(1), walk.list.eq(a.mode == AMode.LIST), walk.base.eq(a.base),
                         walk.stride.eq(a.stride), walk.chunk0.eq(a.chunk0), walk.chunks.eq(a.chunks),
                         walk.rows.eq(a.rows)]
        with m.Case(AMode.PROBS):
            m.d.comb += [walk.stride.eq(1), walk.count.eq(a.rows), walk.by_group.eq(1)]
        with m.Case(AMode.WORDS):
            m.d.comb += [walk.base.eq(a.base), walk.stride.eq(1), walk.count.eq(a.rows * a.chunks)]


def _w_walk(m, ph, walk):
    """The W reader's walk: the weight tile's slot of the buffer, K transposed (its token
    block is the tile's channel block), or V one token per element."""
    w = ph.w
    with m.Switch(w.mode):
        with m.Case(WMode.TILE):
            m.d.comb += [walk.by_slot.eq(1), walk.packed.eq(1), walk.stride.eq(1), walk.count.eq(w.len)]
        with m.Case(WMode.TRANS):
            m.d.comb += [walk.transposed.eq(1), walk.by_cb.eq(1), walk.base.eq(w.base), walk.stride.eq(w.stride),
                         walk.chunk0.eq(w.chunk0), walk.chunks.eq(ph.a.chunks), walk.rows.eq(w.rows)]
        with m.Case(WMode.DIRECT):
            m.d.comb += [walk.by_cb.eq(1), walk.base.eq(w.base), walk.stride.eq(w.stride),
                         walk.chunk0.eq(w.chunk0), walk.count.eq(w.len)]
