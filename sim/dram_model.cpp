// The DRAM of sim/dram.py for the Verilator engine: the same timing, protocol checks and
// counters, compiled into the model and run around every clock edge.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "vm.h"

namespace {

const uint64_t kPage = 4096;

struct Burst {
    uint64_t ready, addr, beats;
};

struct Dram {
    std::vector<uint8_t> mem;
    uint32_t beat = 16, latency = 40;
    double rate = 1.0, credit = 0.0;
    uint64_t cycle = 0;
    uint64_t stats[4] = {0, 0, 0, 0};
    std::string error;
    std::deque<Burst> reads, writes;
    bool have_read = false, driving = false, have_write = false;
    Burst cur_read{}, cur_write{};
    uint64_t responses = 0;
    // ports
    int arvalid, arready, araddr, arlen, arsize, arburst, rvalid, rready, rdata, rlast, rresp;
    int awvalid, awready, awaddr, awlen, awsize, awburst, wvalid, wready, wdata, wstrb, wlast;
    int bvalid, bready, bresp;
    // values sampled before the edge
    bool s_arvalid, s_rready, s_awvalid, s_wvalid, s_wlast, s_bready;
    uint64_t s_araddr, s_arlen, s_arsize, s_arburst, s_awaddr, s_awlen, s_awsize, s_awburst, s_wstrb;
    uint32_t s_wdata[16];

    void fail(const std::string &msg) {
        if (error.empty()) error = msg;
    }

    bool check(const char *kind, uint64_t addr, uint64_t beats, uint64_t size, uint64_t burst) {
        char buf[200];
        if (burst != 1) {
            snprintf(buf, sizeof buf, "%s burst at %#llx: type %llu is not INCR", kind,
                     (unsigned long long)addr, (unsigned long long)burst);
        } else if ((1ull << size) != beat) {
            snprintf(buf, sizeof buf, "%s burst at %#llx: size %llu bytes is not the bus width", kind,
                     (unsigned long long)addr, (unsigned long long)(1ull << size));
        } else if (addr % beat) {
            snprintf(buf, sizeof buf, "%s burst at %#llx is not aligned to %u bytes", kind,
                     (unsigned long long)addr, beat);
        } else if (addr / kPage != (addr + beats * beat - 1) / kPage) {
            snprintf(buf, sizeof buf, "%s burst at %#llx of %llu beats crosses a 4 KiB boundary", kind,
                     (unsigned long long)addr, (unsigned long long)beats);
        } else if (addr + beats * beat > mem.size()) {
            snprintf(buf, sizeof buf, "%s burst at %#llx of %llu beats runs past the DRAM's %zu bytes",
                     kind, (unsigned long long)addr, (unsigned long long)beats, mem.size());
        } else {
            return true;
        }
        fail(buf);
        return false;
    }
};

void before_edge(vm_ctx *ctx, void *arg) {
    Dram *d = static_cast<Dram *>(arg);
    d->s_arvalid = vm_get64(ctx, d->arvalid);
    d->s_araddr = vm_get64(ctx, d->araddr);
    d->s_arlen = vm_get64(ctx, d->arlen);
    d->s_arsize = vm_get64(ctx, d->arsize);
    d->s_arburst = vm_get64(ctx, d->arburst);
    d->s_rready = vm_get64(ctx, d->rready);
    d->s_awvalid = vm_get64(ctx, d->awvalid);
    d->s_awaddr = vm_get64(ctx, d->awaddr);
    d->s_awlen = vm_get64(ctx, d->awlen);
    d->s_awsize = vm_get64(ctx, d->awsize);
    d->s_awburst = vm_get64(ctx, d->awburst);
    d->s_wvalid = vm_get64(ctx, d->wvalid);
    d->s_wstrb = vm_get64(ctx, d->wstrb);
    d->s_wlast = vm_get64(ctx, d->wlast);
    d->s_bready = vm_get64(ctx, d->bready);
    if (d->s_wvalid) vm_get_words(ctx, d->wdata, d->s_wdata);
}

void after_edge(vm_ctx *ctx, void *arg) {
    Dram *d = static_cast<Dram *>(arg);
    d->cycle++;
    d->credit = d->credit + d->rate;
    if (d->credit > 1.0 + d->rate) d->credit = 1.0 + d->rate;
    // reads
    if (d->s_arvalid) {
        uint64_t beats = d->s_arlen + 1;
        if (d->check("read", d->s_araddr, beats, d->s_arsize, d->s_arburst)) {
            d->reads.push_back({d->cycle + d->latency, d->s_araddr, beats});
            d->stats[2]++;
        }
    }
    if (d->driving && d->s_rready) {
        d->cur_read.addr += d->beat;
        d->stats[0] += d->beat;
        if (--d->cur_read.beats == 0) d->have_read = false;
    }
    if (!d->have_read && !d->reads.empty() && d->reads.front().ready <= d->cycle) {
        d->cur_read = d->reads.front();
        d->reads.pop_front();
        d->have_read = true;
    }
    d->driving = d->have_read && d->credit >= 1.0;
    if (d->driving) {
        d->credit -= 1.0;
        uint32_t words[16];
        std::memcpy(words, &d->mem[d->cur_read.addr], d->beat);
        vm_set_words(ctx, d->rdata, words);
        vm_set64(ctx, d->rlast, d->cur_read.beats == 1);
    }
    vm_set64(ctx, d->rvalid, d->driving);
    // writes
    if (d->s_awvalid) {
        uint64_t beats = d->s_awlen + 1;
        if (d->check("write", d->s_awaddr, beats, d->s_awsize, d->s_awburst)) {
            d->writes.push_back({0, d->s_awaddr, beats});
            d->stats[3]++;
        }
    }
    if (d->s_bready && d->responses > 0 && vm_get64(ctx, d->bvalid)) d->responses--;
    if (d->s_wvalid && d->have_write) {
        const uint8_t *bytes = reinterpret_cast<const uint8_t *>(d->s_wdata);
        for (uint32_t i = 0; i < d->beat; i++)
            if (d->s_wstrb >> i & 1) d->mem[d->cur_write.addr + i] = bytes[i];
        d->stats[1] += d->beat;
        d->cur_write.addr += d->beat;
        d->cur_write.beats--;
        if (d->s_wlast != (d->cur_write.beats == 0)) d->fail("write burst: wlast on the wrong beat");
        if (d->cur_write.beats == 0) {
            d->have_write = false;
            d->responses++;
        }
    }
    if (!d->have_write && !d->writes.empty()) {
        d->cur_write = d->writes.front();
        d->writes.pop_front();
        d->have_write = true;
    }
    vm_set64(ctx, d->wready, d->have_write);
    vm_set64(ctx, d->bvalid, d->responses > 0);
}

void release(void *arg) { delete static_cast<Dram *>(arg); }

int port(const std::string &prefix, const char *name) {
    return vm_port_index((prefix + "__" + name).c_str());
}

}  // namespace

extern "C" int dram_attach(vm_ctx *ctx, const char *prefix, uint64_t size, uint32_t latency,
                           double beats_per_cycle) {
    Dram *d = new Dram();
    std::string p(prefix);
    d->mem.assign(size, 0);
    d->latency = latency;
    d->rate = beats_per_cycle;
    int *ports[] = {&d->arvalid, &d->arready, &d->araddr, &d->arlen, &d->arsize, &d->arburst,
                    &d->rvalid, &d->rready, &d->rdata, &d->rlast, &d->rresp, &d->awvalid,
                    &d->awready, &d->awaddr, &d->awlen, &d->awsize, &d->awburst, &d->wvalid,
                    &d->wready, &d->wdata, &d->wstrb, &d->wlast, &d->bvalid, &d->bready, &d->bresp};
    const char *names[] = {"arvalid", "arready", "araddr", "arlen", "arsize", "arburst", "rvalid",
                           "rready", "rdata", "rlast", "rresp", "awvalid", "awready", "awaddr",
                           "awlen", "awsize", "awburst", "wvalid", "wready", "wdata", "wstrb",
                           "wlast", "bvalid", "bready", "bresp"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *ports[i] = port(p, names[i]);
        if (*ports[i] < 0) {
            delete d;
            return -1;
        }
    }
    d->beat = (vm_port_width(d->rdata) + 7) / 8;
    if (d->beat > 64 || vm_attach(ctx, "dram", d, before_edge, after_edge, release) != 0) {
        delete d;
        return -1;
    }
    vm_set64(ctx, d->arready, 1);
    vm_set64(ctx, d->awready, 1);
    return 0;
}

extern "C" void dram_write(vm_ctx *ctx, uint64_t addr, const uint8_t *src, uint64_t n) {
    Dram *d = static_cast<Dram *>(vm_attached(ctx, "dram"));
    std::memcpy(&d->mem[addr], src, n);
}

extern "C" void dram_read(vm_ctx *ctx, uint64_t addr, uint8_t *dst, uint64_t n) {
    Dram *d = static_cast<Dram *>(vm_attached(ctx, "dram"));
    std::memcpy(dst, &d->mem[addr], n);
}

extern "C" void dram_stats(vm_ctx *ctx, uint64_t *out) {
    Dram *d = static_cast<Dram *>(vm_attached(ctx, "dram"));
    for (int i = 0; i < 4; i++) out[i] = d->stats[i];
}

extern "C" const char *dram_error(vm_ctx *ctx) {
    Dram *d = static_cast<Dram *>(vm_attached(ctx, "dram"));
    return d->error.c_str();
}
