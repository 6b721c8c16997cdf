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
    uint64_t ready, addr, beats;
};

struct WriteBurst {
    uint64_t addr, beats;
};

enum Port {
    ARVALID, ARREADY, ARADDR, ARLEN, ARSIZE, ARBURST, RVALID, RREADY, RDATA, RLAST,
    AWVALID, AWREADY, AWADDR, AWLEN, AWSIZE, AWBURST, WVALID, WREADY, WDATA, WSTRB, WLAST,
    BVALID, BREADY, NUM_PORTS
};

const char *const kPortNames[NUM_PORTS] = {
    "arvalid", "arready", "araddr", "arlen", "arsize", "arburst", "rvalid", "rready", "rdata",
    "rlast", "awvalid", "awready", "awaddr", "awlen", "awsize", "awburst", "wvalid", "wready",
    "wdata", "wstrb", "wlast", "bvalid", "bready"};

struct Dram {
    std::vector<uint8_t> mem;
    uint32_t beat = 16;
    uint64_t latency = 40;
    uint64_t rate = kOne;  // tokens per cycle
    int port[NUM_PORTS];
    uint64_t stats[4] = {0, 0, 0, 0};  // bytes read, bytes written, read bursts, write bursts
    std::string error;
    uint64_t cycle = 0;

    std::deque<ReadBurst> reads;
    uint64_t r_addr = 0, r_left = 0;
    bool r_valid = false;
    uint64_t credit = 0;
    std::vector<uint32_t> r_words;

    std::deque<WriteBurst> writes;
    uint64_t w_addr = 0, w_left = 0, responses = 0;

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

    bool strobe(uint32_t i) const { return wstrb[i / 32] >> (i % 32) & 1; }
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
    if (d->wvalid && d->w_left) {
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
    // Read channel.
    if (d->arvalid && d->check_burst("read", d->araddr, d->arlen + 1, d->arsize, d->arburst)) {
        d->reads.push_back({d->cycle + d->latency - 1, d->araddr, d->arlen + 1});
        d->stats[2]++;
    }
    if (d->r_valid && d->rready) {
        d->r_valid = false;
        d->r_addr += d->beat;
        d->r_left--;
        d->stats[0] += d->beat;
    }
    if (!d->r_left && !d->reads.empty() && d->reads.front().ready <= d->cycle) {
        d->r_addr = d->reads.front().addr;
        d->r_left = d->reads.front().beats;
        d->reads.pop_front();
    }
    d->credit += d->rate;
    if (!d->r_valid && d->r_left) {
        if (d->credit >= kOne) {
            d->credit -= kOne;
            d->r_valid = true;
            std::memcpy(d->r_words.data(), &d->mem[d->r_addr], d->beat);
            vm_set_words(ctx, p[RDATA], d->r_words.data());
            vm_set64(ctx, p[RLAST], d->r_left == 1);
        }
    } else if (d->credit > kOne - d->rate) {
        // Idle or held by RREADY: bank one beat, no more.
        d->credit = kOne - d->rate;
    }
    vm_set64(ctx, p[RVALID], d->r_valid);

    // Write channels; WREADY is high exactly while w_left is nonzero.
    if (d->awvalid && d->check_burst("write", d->awaddr, d->awlen + 1, d->awsize, d->awburst)) {
        d->writes.push_back({d->awaddr, d->awlen + 1});
        d->stats[3]++;
    }
    if (d->responses && d->bready) d->responses--;
    if (d->wvalid && d->w_left) {
        const uint8_t *bytes = reinterpret_cast<const uint8_t *>(d->wdata.data());
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
        if (!d->w_left) d->responses++;
    }
    if (!d->w_left && !d->writes.empty()) {
        d->w_addr = d->writes.front().addr;
        d->w_left = d->writes.front().beats;
        d->writes.pop_front();
    }
    vm_set64(ctx, p[WREADY], d->w_left != 0);
    vm_set64(ctx, p[BVALID], d->responses != 0);
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

extern "C" const char *dram_error(vm_ctx *ctx) {
    Dram *d = attached(ctx);
    return d ? d->error.c_str() : "DRAM model not attached";
}
