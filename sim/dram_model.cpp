// The DRAM of sim/dram.py for the Verilator engine (sim/verilator_engine.py): one memory behind
// one or more AXI4 ports, the same timing, cycle for cycle, the same protocol checks and counters. The module docstring of
// sim/dram.py describes the behaviour; this file mirrors DRAMModel.serve() step by step, so a
// change to one belongs in the other.
//
// Per clock edge the harness calls before_edge() with the design settled (the handshakes of
// this edge are decided: sample them) and after_edge() once the edge has passed (drive what
// the design sees during the next cycle).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "vm.h"

namespace {

const uint64_t kPage = 4096;
const uint64_t kOne = 1 << 16;  // a read beat's cost in tokens, as in sim/dram.py

struct ReadBurst {
    uint64_t ready, addr, beats, resp;
};

struct WriteBurst {
    uint64_t addr, beats, resp;
};

enum Port {
    ARVALID, ARREADY, ARADDR, ARLEN, ARSIZE, ARBURST, RVALID, RREADY, RDATA, RLAST, RRESP,
    AWVALID, AWREADY, AWADDR, AWLEN, AWSIZE, AWBURST, WVALID, WREADY, WDATA, WSTRB, WLAST,
    BVALID, BREADY, BRESP, NUM_PORTS
};

const char *const kPortNames[NUM_PORTS] = {
    "arvalid", "arready", "araddr", "arlen", "arsize", "arburst", "rvalid", "rready", "rdata",
    "rlast", "rresp", "awvalid", "awready", "awaddr", "awlen", "awsize", "awburst", "wvalid",
    "wready", "wdata", "wstrb", "wlast", "bvalid", "bready", "bresp"};

// splitmix64, stepped exactly as sim/dram.py's _SplitMix64: the high half of each output.
struct SplitMix64 {
    uint64_t state = 1;
    uint64_t next() {
        state += 0x9E3779B97F4A7C15ull;
        uint64_t z = state;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return (z ^ (z >> 31)) >> 32;
    }
};

// A transfer offered on AR, AW or W and not yet taken: what it must keep offering.
struct Held {
    bool valid = false;
    uint64_t a = 0, b = 0;
    std::vector<uint32_t> data, strb;
};

// One AXI4 port: its signals, its bursts, its R beat and its own bucket (sim/dram.py's _Port).
struct PortState {
    int port[NUM_PORTS];
    std::deque<ReadBurst> reads;
    uint64_t r_addr = 0, r_left = 0, r_resp = 0;
    bool r_valid = false;
    uint64_t credit = 0;
    std::vector<uint32_t> r_words;

    std::deque<WriteBurst> writes;
    uint64_t w_addr = 0, w_left = 0, w_resp = 0;
    std::deque<uint64_t> responses;
    bool arready = true, awready = true, wready = false;
    Held held_ar, held_aw, held_w;
    uint64_t w_first = 0;

    // Sampled before the edge.
    bool arvalid = false, rready = false, awvalid = false, wvalid = false, wlast = false,
         bready = false;
    uint64_t araddr = 0, arlen = 0, arsize = 0, arburst = 0;
    uint64_t awaddr = 0, awlen = 0, awsize = 0, awburst = 0;
    std::vector<uint32_t> wdata, wstrb;

    bool busy() const {
        return !reads.empty() || r_left || !writes.empty() || w_left || !responses.empty();
    }

    bool strobe(uint32_t i) const { return wstrb[i / 32] >> (i % 32) & 1; }

    bool any_strobe(uint32_t beat) const {
        for (uint32_t i = 0; i < beat; i++)
            if (strobe(i)) return true;
        return false;
    }
};

struct Dram {
    std::vector<uint8_t> mem;
    uint32_t beat = 16;
    uint64_t latency = 40;
    uint64_t rate = kOne;         // tokens per cycle of each port's bucket
    uint64_t shared_rate = kOne;  // tokens per cycle of the memory's shared bucket
    uint64_t shared = 0;
    size_t last_served = 0;
    std::vector<PortState> ports;
    uint64_t stats[4] = {0, 0, 0, 0};  // bytes read, bytes written, read bursts, write bursts
    std::string error;
    uint64_t cycle = 0;
    // Fault bookkeeping: the first cycle an error response was offered (0: none yet, else
    // cycle + 1), and write beats with strobes first offered after it.
    uint64_t error_cycle = 0, late_writes = 0;

    // Impolite settings (sim/dram.py's Impolite); all zero is polite.
    SplitMix64 rng;
    uint64_t ar_thr = 0, aw_thr = 0, w_thr = 0, gap_thr = 0, spread = 0;
    uint64_t period = 0, refresh = 0, err_lo = 0, err_hi = 0, err_resp = 2;
    uint64_t bus_cycle = 0;  // cycles with the bus in use

    void fail(const char *msg) {
        if (error.empty()) error = msg;
    }

    // Returns whether the burst may be served; records the first violation otherwise.
    bool check_burst(const char *kind, uint64_t addr, uint64_t beats, uint64_t size,
                     uint64_t burst) {
        char buf[256];
        unsigned long long a = addr, n = beats;
        uint64_t end = addr + beats * beat;
        if (burst != 1) {
            snprintf(buf, sizeof buf, "%s burst at %#llx: burst type %llu is not INCR (1)", kind,
                     a, (unsigned long long)burst);
        } else if ((1ull << size) != beat) {
            snprintf(buf, sizeof buf,
                     "%s burst at %#llx: AxSIZE %llu (%llu bytes) is not the %u-byte bus width",
                     kind, a, (unsigned long long)size, 1ull << size, beat);
        } else if (addr % beat) {
            snprintf(buf, sizeof buf, "%s burst at %#llx is not aligned to the %u-byte beat", kind,
                     a, beat);
        } else if (addr / kPage != (end - 1) / kPage) {
            snprintf(buf, sizeof buf,
                     "%s burst at %#llx of %llu beats crosses the 4 KiB boundary at %#llx", kind, a,
                     n, (unsigned long long)((addr / kPage + 1) * kPage));
        } else if (end > mem.size()) {
            snprintf(buf, sizeof buf,
                     "%s burst at %#llx of %llu beats runs past the end of the %llu-byte DRAM",
                     kind, a, n, (unsigned long long)mem.size());
        } else {
            return true;
        }
        fail(buf);
        return false;
    }

    // A transfer offered must stay offered, unchanged, until READY takes it.
    void hold(const char *ch, Held &h, bool valid, bool ready, uint64_t a, uint64_t b,
              const std::vector<uint32_t> *data, const std::vector<uint32_t> *strb) {
        if (h.valid) {
            bool same = valid && h.a == a && h.b == b && (!data || (h.data == *data && h.strb == *strb));
            if (!same) {
                char buf[160];
                snprintf(buf, sizeof buf, "%s transfer %s before READY took it", ch,
                         valid ? "changed" : "withdrawn");
                fail(buf);
            }
        }
        h.valid = valid && !ready;
        if (h.valid) {
            h.a = a;
            h.b = b;
            if (data) {
                h.data = *data;
                h.strb = *strb;
            }
        }
    }

    bool touches_error(uint64_t addr, uint64_t n) const {
        return addr < err_hi && addr + n > err_lo;
    }

    // The read side of one port up to its bucket (sim/dram.py's first loop): returns whether
    // the port could send a beat now and may ask the shared bucket.
    bool read_side(PortState &s, uint64_t cycle, bool refreshing) {
        if (s.held_ar.valid || s.held_aw.valid || !(s.arready && s.awready)) {
            hold("AR", s.held_ar, s.arvalid, s.arready,
                 s.arvalid ? s.araddr : 0, s.arvalid ? (s.arlen | s.arsize << 8 | s.arburst << 11) : 0,
                 nullptr, nullptr);
            hold("AW", s.held_aw, s.awvalid, s.awready,
                 s.awvalid ? s.awaddr : 0, s.awvalid ? (s.awlen | s.awsize << 8 | s.awburst << 11) : 0,
                 nullptr, nullptr);
        }
        if (s.held_w.valid || (s.wvalid && !s.wready))
            hold("W", s.held_w, s.wvalid, s.wready, 0, s.wvalid ? s.wlast : 0, &s.wdata, &s.wstrb);
        if (s.arvalid && s.arready &&
            check_burst("read", s.araddr, s.arlen + 1, s.arsize, s.arburst)) {
            uint64_t delay = latency - 1 + (spread ? rng.next() % spread : 0);
            uint64_t resp = touches_error(s.araddr, (s.arlen + 1) * beat) ? err_resp : 0;
            s.reads.push_back({cycle + delay, s.araddr, s.arlen + 1, resp});
            stats[2]++;
        }
        if (s.r_valid && s.rready) {
            s.r_valid = false;
            s.r_addr += beat;
            s.r_left--;
            stats[0] += beat;
        }
        if (!s.r_left && !s.reads.empty() && s.reads.front().ready <= cycle) {
            s.r_addr = s.reads.front().addr;
            s.r_left = s.reads.front().beats;
            s.r_resp = s.reads.front().resp;
            s.reads.pop_front();
        }
        s.credit += rate;
        if (!s.r_valid && s.r_left && !refreshing) {
            if (s.credit >= kOne) {
                if (gap_thr && rng.next() < gap_thr) {
                    s.credit = kOne;  // held back: still one beat banked, no more
                } else {
                    return true;
                }
            }
        } else if (s.credit > kOne - rate) {
            // Idle or held by RREADY: bank one beat, no more.
            s.credit = kOne - rate;
        }
        return false;
    }

    void send_beat(vm_ctx *ctx, PortState &s, uint64_t cycle) {
        const int *p = s.port;
        s.credit -= kOne;
        s.r_valid = true;
        std::memcpy(s.r_words.data(), &mem[s.r_addr], beat);
        vm_set_words(ctx, p[RDATA], s.r_words.data());
        vm_set64(ctx, p[RLAST], s.r_left == 1);
        vm_set64(ctx, p[RRESP], s.r_resp);
        if (s.r_resp && !error_cycle) error_cycle = cycle + 2;
    }

    // The write side of one port and its ready draws (sim/dram.py's last loop).
    void write_side(vm_ctx *ctx, PortState &s, uint64_t cycle, bool active, bool refreshing) {
        const int *p = s.port;
        vm_set64(ctx, p[RVALID], s.r_valid);
        if (s.awvalid && s.awready &&
            check_burst("write", s.awaddr, s.awlen + 1, s.awsize, s.awburst)) {
            uint64_t resp = touches_error(s.awaddr, (s.awlen + 1) * beat) ? err_resp : 0;
            s.writes.push_back({s.awaddr, s.awlen + 1, resp});
            stats[3]++;
        }
        if (!s.responses.empty() && s.bready) s.responses.pop_front();
        if (s.wvalid && s.wready) {
            uint64_t first = s.w_first ? s.w_first : cycle;
            s.w_first = 0;
            if (error_cycle && first > error_cycle - 1 && s.any_strobe(beat)) late_writes++;
            const uint8_t *bytes = reinterpret_cast<const uint8_t *>(s.wdata.data());
            if (!s.w_resp)  // an erroneous burst stores nothing
                for (uint32_t i = 0; i < beat; i++)
                    if (s.strobe(i)) mem[s.w_addr + i] = bytes[i];
            s.w_left--;
            if (s.wlast != (s.w_left == 0)) {
                char buf[160];
                snprintf(buf, sizeof buf,
                         "write burst: WLAST %s on the beat at %#llx with %llu beats of the burst to go",
                         s.wlast ? "set" : "missing", (unsigned long long)s.w_addr,
                         (unsigned long long)s.w_left);
                fail(buf);
            }
            s.w_addr += beat;
            stats[1] += beat;
            if (!s.w_left) s.responses.push_back(s.w_resp);
        } else if (s.wvalid && !s.w_first) {
            s.w_first = cycle;
        }
        if (!s.w_left && !s.writes.empty()) {
            s.w_addr = s.writes.front().addr;
            s.w_left = s.writes.front().beats;
            s.w_resp = s.writes.front().resp;
            s.writes.pop_front();
        }
        if (ar_thr && active) {
            s.arready = rng.next() >= ar_thr;
            vm_set64(ctx, p[ARREADY], s.arready);
        }
        if (aw_thr && active) {
            s.awready = rng.next() >= aw_thr;
            vm_set64(ctx, p[AWREADY], s.awready);
        }
        s.wready = s.w_left != 0 && !refreshing;
        if (w_thr && s.wready && active) s.wready = rng.next() >= w_thr;
        vm_set64(ctx, p[WREADY], s.wready);
        vm_set64(ctx, p[BVALID], !s.responses.empty());
        if (!s.responses.empty()) {
            vm_set64(ctx, p[BRESP], s.responses.front());
            if (s.responses.front() && !error_cycle) error_cycle = cycle + 2;
        }
    }
};

void before_edge(vm_ctx *ctx, void *arg) {
    Dram *d = static_cast<Dram *>(arg);
    for (PortState &s : d->ports) {
        const int *p = s.port;
        s.arvalid = vm_get64(ctx, p[ARVALID]);
        if (s.arvalid) {
            s.araddr = vm_get64(ctx, p[ARADDR]);
            s.arlen = vm_get64(ctx, p[ARLEN]);
            s.arsize = vm_get64(ctx, p[ARSIZE]);
            s.arburst = vm_get64(ctx, p[ARBURST]);
        }
        s.rready = vm_get64(ctx, p[RREADY]);
        s.awvalid = vm_get64(ctx, p[AWVALID]);
        if (s.awvalid) {
            s.awaddr = vm_get64(ctx, p[AWADDR]);
            s.awlen = vm_get64(ctx, p[AWLEN]);
            s.awsize = vm_get64(ctx, p[AWSIZE]);
            s.awburst = vm_get64(ctx, p[AWBURST]);
        }
        s.wvalid = vm_get64(ctx, p[WVALID]);
        if (s.wvalid) {
            vm_get_words(ctx, p[WDATA], s.wdata.data());
            vm_get_words(ctx, p[WSTRB], s.wstrb.data());
            s.wlast = vm_get64(ctx, p[WLAST]);
        }
        s.bready = vm_get64(ctx, p[BREADY]);
    }
}

void after_edge(vm_ctx *ctx, void *arg) {
    Dram *d = static_cast<Dram *>(arg);
    d->cycle++;
    const uint64_t cycle = d->cycle;
    const size_t n = d->ports.size();
    // The impolite clock runs only while the bus is in use (sim/dram.py says why).
    bool active = false;
    for (const PortState &s : d->ports)
        active = active || s.arvalid || s.awvalid || s.wvalid || s.busy();
    if (active) d->bus_cycle++;
    const bool refreshing = active && d->period && d->bus_cycle % d->period < d->refresh;
    // Reads, port by port, up to each port's bucket; then the shared bucket, round-robin from
    // the port after the last one served.
    std::vector<bool> candidate(n, false);
    for (size_t i = 0; i < n; i++) candidate[i] = d->read_side(d->ports[i], cycle, refreshing);
    d->shared += d->shared_rate;
    bool refused = false;
    const size_t after = d->last_served;
    for (size_t k = 1; k <= n; k++) {
        size_t i = (after + k) % n;
        if (!candidate[i]) continue;
        if (d->shared < kOne) {
            d->ports[i].credit = kOne - d->rate;  // refused: it keeps one beat banked, no more
            refused = true;
            continue;
        }
        d->shared -= kOne;
        d->send_beat(ctx, d->ports[i], cycle);
        d->last_served = i;
    }
    const uint64_t keep = d->shared_rate < kOne ? kOne - d->shared_rate : 0;
    if (!refused && d->shared > keep) d->shared = keep;
    for (PortState &s : d->ports) d->write_side(ctx, s, cycle, active, refreshing);
}

void release(void *arg) { delete static_cast<Dram *>(arg); }

Dram *attached(vm_ctx *ctx) { return static_cast<Dram *>(vm_attached(ctx, "dram")); }

bool in_range(const Dram *d, uint64_t addr, uint64_t n) {
    return d && addr <= d->mem.size() && n <= d->mem.size() - addr;
}

}  // namespace

// Attaches one memory to the ports named by `prefixes` (comma-separated, port 0 first).
// Returns 0, -1 when a signal of a port is missing, -2 when a DRAM is already attached,
// -3 for bad parameters (zero size or latency, rate outside (0, 1], no shared rate, data
// width not 8..1024 or not the same on every port).
extern "C" int dram_attach(vm_ctx *ctx, const char *prefixes, uint64_t size, uint32_t latency,
                           double beats_per_cycle, uint64_t shared_rate) {
    if (vm_attached(ctx, "dram")) return -2;
    if (size == 0 || latency == 0 || shared_rate == 0 ||
        !(beats_per_cycle > 0.0 && beats_per_cycle <= 1.0))
        return -3;
    Dram *d = new Dram();
    std::string all(prefixes);
    int width = 0;
    for (size_t from = 0;;) {
        size_t comma = all.find(',', from);
        std::string prefix = all.substr(from, comma == std::string::npos ? std::string::npos : comma - from);
        std::string head = prefix.empty() ? std::string() : prefix + "__";
        PortState s;
        for (int i = 0; i < NUM_PORTS; i++) {
            s.port[i] = vm_port_index((head + kPortNames[i]).c_str());
            if (s.port[i] < 0) {
                delete d;
                return -1;
            }
        }
        int w = vm_port_width(s.port[RDATA]);
        if (w < 8 || w > 1024 || (w & (w - 1)) || (width && w != width)) {
            delete d;
            return -3;
        }
        width = w;
        d->ports.push_back(s);
        if (comma == std::string::npos) break;
        from = comma + 1;
    }
    d->beat = width / 8;
    d->mem.assign(size, 0);
    d->latency = latency;
    d->rate = static_cast<uint64_t>(beats_per_cycle * kOne + 0.5);
    if (d->rate == 0) d->rate = 1;
    d->shared_rate = shared_rate;
    d->last_served = d->ports.size() - 1;
    // At least two words: the word accessors touch words[1] of ports 33..64 bits wide.
    size_t words = (width + 31) / 32 < 2 ? 2 : (width + 31) / 32;
    for (PortState &s : d->ports) {
        s.r_words.assign(words, 0);
        s.wdata.assign(words, 0);
        s.wstrb.assign(words, 0);
    }
    vm_attach(ctx, "dram", d, before_edge, after_edge, release);
    for (PortState &s : d->ports) {
        vm_set64(ctx, s.port[ARREADY], 1);
        vm_set64(ctx, s.port[AWREADY], 1);
    }
    return 0;
}

extern "C" void dram_write(vm_ctx *ctx, uint64_t addr, const uint8_t *src, uint64_t n) {
    Dram *d = attached(ctx);
    if (in_range(d, addr, n) && n) std::memcpy(&d->mem[addr], src, n);
}

extern "C" void dram_read(vm_ctx *ctx, uint64_t addr, uint8_t *dst, uint64_t n) {
    Dram *d = attached(ctx);
    if (in_range(d, addr, n) && n) std::memcpy(dst, &d->mem[addr], n);
}

extern "C" void dram_stats(vm_ctx *ctx, uint64_t out[4]) {
    Dram *d = attached(ctx);
    for (int i = 0; i < 4; i++) out[i] = d ? d->stats[i] : 0;
}

// The Impolite settings of sim/dram.py, its probabilities as 32-bit thresholds. Returns 0, or
// -1 when no DRAM is attached, -3 for bad parameters.
extern "C" int dram_impolite(vm_ctx *ctx, uint64_t seed, const uint32_t thresholds[4],
                             uint32_t latency_max, uint64_t period, uint64_t length,
                             uint64_t err_lo, uint64_t err_hi, uint32_t err_resp) {
    Dram *d = attached(ctx);
    if (!d) return -1;
    if (latency_max < d->latency || (length && length >= period) || err_hi < err_lo ||
        (err_resp != 2 && err_resp != 3))
        return -3;
    d->rng.state = seed;
    d->ar_thr = thresholds[0];
    d->aw_thr = thresholds[1];
    d->w_thr = thresholds[2];
    d->gap_thr = thresholds[3];
    d->spread = latency_max > d->latency ? latency_max - d->latency + 1 : 0;
    d->period = period;
    d->refresh = length;
    d->err_lo = err_lo;
    d->err_hi = err_hi;
    d->err_resp = err_resp;
    return 0;
}

// (cycle, error_cycle + 1 or 0 for none, late_writes), as sim/dram.py's DRAMModel names them.
extern "C" void dram_faults(vm_ctx *ctx, uint64_t out[3]) {
    Dram *d = attached(ctx);
    out[0] = d ? d->cycle : 0;
    out[1] = d ? d->error_cycle : 0;
    out[2] = d ? d->late_writes : 0;
}

extern "C" const char *dram_error(vm_ctx *ctx) {
    Dram *d = attached(ctx);
    return d ? d->error.c_str() : "DRAM model not attached";
}
