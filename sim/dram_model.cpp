// The DRAM of sim/dram.py for the Verilator engine (sim/verilator_engine.py): the same
// timing, cycle for cycle, the same protocol checks and counters. The module docstring of
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

struct Dram {
    std::vector<uint8_t> mem;
    uint32_t beat = 16;
    uint64_t latency = 40;
    uint64_t rate = kOne;  // tokens per cycle
    int port[NUM_PORTS];
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

    bool strobe(uint32_t i) const { return wstrb[i / 32] >> (i % 32) & 1; }

    bool any_strobe() const {
        for (uint32_t i = 0; i < beat; i++)
            if (strobe(i)) return true;
        return false;
    }
};

void before_edge(vm_ctx *ctx, void *arg) {
    Dram *d = static_cast<Dram *>(arg);
    const int *p = d->port;
    d->arvalid = vm_get64(ctx, p[ARVALID]);
    if (d->arvalid) {
        d->araddr = vm_get64(ctx, p[ARADDR]);
        d->arlen = vm_get64(ctx, p[ARLEN]);
        d->arsize = vm_get64(ctx, p[ARSIZE]);
        d->arburst = vm_get64(ctx, p[ARBURST]);
    }
    d->rready = vm_get64(ctx, p[RREADY]);
    d->awvalid = vm_get64(ctx, p[AWVALID]);
    if (d->awvalid) {
        d->awaddr = vm_get64(ctx, p[AWADDR]);
        d->awlen = vm_get64(ctx, p[AWLEN]);
        d->awsize = vm_get64(ctx, p[AWSIZE]);
        d->awburst = vm_get64(ctx, p[AWBURST]);
    }
    d->wvalid = vm_get64(ctx, p[WVALID]);
    if (d->wvalid) {
        vm_get_words(ctx, p[WDATA], d->wdata.data());
        vm_get_words(ctx, p[WSTRB], d->wstrb.data());
        d->wlast = vm_get64(ctx, p[WLAST]);
    }
    d->bready = vm_get64(ctx, p[BREADY]);
}

void after_edge(vm_ctx *ctx, void *arg) {
    Dram *d = static_cast<Dram *>(arg);
    const int *p = d->port;
    d->cycle++;
    const uint64_t cycle = d->cycle;
    // The impolite clock runs only while the bus is in use (sim/dram.py says why).
    const bool active = d->arvalid || d->awvalid || d->wvalid || !d->reads.empty() || d->r_left ||
                        !d->writes.empty() || d->w_left || !d->responses.empty();
    if (active) d->bus_cycle++;
    const bool refreshing = active && d->period && d->bus_cycle % d->period < d->refresh;
    if (d->held_ar.valid || d->held_aw.valid || !(d->arready && d->awready)) {
        d->hold("AR", d->held_ar, d->arvalid, d->arready,
                d->arvalid ? d->araddr : 0, d->arvalid ? (d->arlen | d->arsize << 8 | d->arburst << 11) : 0,
                nullptr, nullptr);
        d->hold("AW", d->held_aw, d->awvalid, d->awready,
                d->awvalid ? d->awaddr : 0, d->awvalid ? (d->awlen | d->awsize << 8 | d->awburst << 11) : 0,
                nullptr, nullptr);
    }
    if (d->held_w.valid || (d->wvalid && !d->wready))
        d->hold("W", d->held_w, d->wvalid, d->wready, 0, d->wvalid ? d->wlast : 0, &d->wdata, &d->wstrb);
    // Read channel.
    if (d->arvalid && d->arready &&
        d->check_burst("read", d->araddr, d->arlen + 1, d->arsize, d->arburst)) {
        uint64_t delay = d->latency - 1 + (d->spread ? d->rng.next() % d->spread : 0);
        uint64_t resp = d->touches_error(d->araddr, (d->arlen + 1) * d->beat) ? d->err_resp : 0;
        d->reads.push_back({cycle + delay, d->araddr, d->arlen + 1, resp});
        d->stats[2]++;
    }
    if (d->r_valid && d->rready) {
        d->r_valid = false;
        d->r_addr += d->beat;
        d->r_left--;
        d->stats[0] += d->beat;
    }
    if (!d->r_left && !d->reads.empty() && d->reads.front().ready <= cycle) {
        d->r_addr = d->reads.front().addr;
        d->r_left = d->reads.front().beats;
        d->r_resp = d->reads.front().resp;
        d->reads.pop_front();
    }
    d->credit += d->rate;
    if (!d->r_valid && d->r_left && !refreshing) {
        if (d->credit >= kOne) {
            if (d->gap_thr && d->rng.next() < d->gap_thr) {
                d->credit = kOne;  // held back: still one beat banked, no more
            } else {
                d->credit -= kOne;
                d->r_valid = true;
                std::memcpy(d->r_words.data(), &d->mem[d->r_addr], d->beat);
                vm_set_words(ctx, p[RDATA], d->r_words.data());
                vm_set64(ctx, p[RLAST], d->r_left == 1);
                vm_set64(ctx, p[RRESP], d->r_resp);
                if (d->r_resp && !d->error_cycle) d->error_cycle = cycle + 2;
            }
        }
    } else if (d->credit > kOne - d->rate) {
        // Idle or held by RREADY: bank one beat, no more.
        d->credit = kOne - d->rate;
    }
    vm_set64(ctx, p[RVALID], d->r_valid);

    // Write channels.
    if (d->awvalid && d->awready &&
        d->check_burst("write", d->awaddr, d->awlen + 1, d->awsize, d->awburst)) {
        uint64_t resp = d->touches_error(d->awaddr, (d->awlen + 1) * d->beat) ? d->err_resp : 0;
        d->writes.push_back({d->awaddr, d->awlen + 1, resp});
        d->stats[3]++;
    }
    if (!d->responses.empty() && d->bready) d->responses.pop_front();
    if (d->wvalid && d->wready) {
        uint64_t first = d->w_first ? d->w_first : cycle;
        d->w_first = 0;
        if (d->error_cycle && first > d->error_cycle - 1 && d->any_strobe()) d->late_writes++;
        const uint8_t *bytes = reinterpret_cast<const uint8_t *>(d->wdata.data());
        if (!d->w_resp)  // an erroneous burst stores nothing
            for (uint32_t i = 0; i < d->beat; i++)
                if (d->strobe(i)) d->mem[d->w_addr + i] = bytes[i];
        d->w_left--;
        if (d->wlast != (d->w_left == 0)) {
            char buf[160];
            snprintf(buf, sizeof buf,
                     "write burst: WLAST %s on the beat at %#llx with %llu beats of the burst to go",
                     d->wlast ? "set" : "missing", (unsigned long long)d->w_addr,
                     (unsigned long long)d->w_left);
            d->fail(buf);
        }
        d->w_addr += d->beat;
        d->stats[1] += d->beat;
        if (!d->w_left) d->responses.push_back(d->w_resp);
    } else if (d->wvalid && !d->w_first) {
        d->w_first = cycle;
    }
    if (!d->w_left && !d->writes.empty()) {
        d->w_addr = d->writes.front().addr;
        d->w_left = d->writes.front().beats;
        d->w_resp = d->writes.front().resp;
        d->writes.pop_front();
    }
    if (d->ar_thr && active) {
        d->arready = d->rng.next() >= d->ar_thr;
        vm_set64(ctx, p[ARREADY], d->arready);
    }
    if (d->aw_thr && active) {
        d->awready = d->rng.next() >= d->aw_thr;
        vm_set64(ctx, p[AWREADY], d->awready);
    }
    d->wready = d->w_left != 0 && !refreshing;
    if (d->w_thr && d->wready && active) d->wready = d->rng.next() >= d->w_thr;
    vm_set64(ctx, p[WREADY], d->wready);
    vm_set64(ctx, p[BVALID], !d->responses.empty());
    if (!d->responses.empty()) {
        vm_set64(ctx, p[BRESP], d->responses.front());
        if (d->responses.front() && !d->error_cycle) d->error_cycle = cycle + 2;
    }
}

void release(void *arg) { delete static_cast<Dram *>(arg); }

Dram *attached(vm_ctx *ctx) { return static_cast<Dram *>(vm_attached(ctx, "dram")); }

bool in_range(const Dram *d, uint64_t addr, uint64_t n) {
    return d && addr <= d->mem.size() && n <= d->mem.size() - addr;
}

}  // namespace

// Returns 0, -1 when a signal of the port is missing, -2 when a DRAM is already attached,
// -3 for bad parameters (zero size or latency, rate outside (0, 1], data width not 8..1024).
extern "C" int dram_attach(vm_ctx *ctx, const char *prefix, uint64_t size, uint32_t latency,
                           double beats_per_cycle) {
    if (vm_attached(ctx, "dram")) return -2;
    if (size == 0 || latency == 0 || !(beats_per_cycle > 0.0 && beats_per_cycle <= 1.0))
        return -3;
    Dram *d = new Dram();
    std::string head = *prefix ? std::string(prefix) + "__" : std::string();
    for (int i = 0; i < NUM_PORTS; i++) {
        d->port[i] = vm_port_index((head + kPortNames[i]).c_str());
        if (d->port[i] < 0) {
            delete d;
            return -1;
        }
    }
    int width = vm_port_width(d->port[RDATA]);
    if (width < 8 || width > 1024 || (width & (width - 1))) {
        delete d;
        return -3;
    }
    d->beat = width / 8;
    d->mem.assign(size, 0);
    d->latency = latency;
    d->rate = static_cast<uint64_t>(beats_per_cycle * kOne + 0.5);
    if (d->rate == 0) d->rate = 1;
    // At least two words: the word accessors touch words[1] of ports 33..64 bits wide.
    size_t words = (width + 31) / 32 < 2 ? 2 : (width + 31) / 32;
    d->r_words.assign(words, 0);
    d->wdata.assign(words, 0);
    d->wstrb.assign(words, 0);
    vm_attach(ctx, "dram", d, before_edge, after_edge, release);
    vm_set64(ctx, d->port[ARREADY], 1);
    vm_set64(ctx, d->port[AWREADY], 1);
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
