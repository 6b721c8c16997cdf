// The timeline recorder of sim/trace.py for the Verilator engine: it watches the accelerator's
// trace port (gateware.phase.Trace) every cycle and keeps one segment per run of cycles in which
// everything but the per-cycle event bits stays the same. sim/trace.py's pysim recorder does the
// same in Python; both hand over segments as (first cycle, key, events counted per event bit).
#include <cstdint>
#include <vector>

#include "vm.h"

namespace {

const int kEvents = 2;  // event bits counted per segment: MAC transfer, stall

struct Segment {
    uint64_t start, key, count[kEvents];
};

struct Tracer {
    int port = -1;
    uint64_t event_mask[kEvents] = {0, 0};
    uint64_t key_mask = ~0ull;
    std::vector<Segment> segments;
};

// Sampled before the edge, as the DRAM model samples its handshakes: a transfer counted here is
// one this edge completes.
void before_edge(vm_ctx *ctx, void *arg) {
    Tracer *t = static_cast<Tracer *>(arg);
    uint64_t value = vm_get64(ctx, t->port);
    uint64_t key = value & t->key_mask;
    if (t->segments.empty() || t->segments.back().key != key)
        t->segments.push_back({vm_cycle(ctx), key, {0, 0}});
    Segment &s = t->segments.back();
    for (int i = 0; i < kEvents; i++) s.count[i] += (value & t->event_mask[i]) != 0;
}

void release(void *arg) { delete static_cast<Tracer *>(arg); }

Tracer *attached(vm_ctx *ctx) { return static_cast<Tracer *>(vm_attached(ctx, "trace")); }

}  // namespace

// Returns 0, -1 when the port is missing or wider than 64 bits, -2 when already attached.
extern "C" int trace_attach(vm_ctx *ctx, const char *port, uint64_t mac_mask, uint64_t stall_mask) {
    if (attached(ctx)) return -2;
    int index = vm_port_index(port);
    if (index < 0 || vm_port_width(index) > 64) return -1;
    Tracer *t = new Tracer();
    t->port = index;
    t->event_mask[0] = mac_mask;
    t->event_mask[1] = stall_mask;
    t->key_mask = ~(mac_mask | stall_mask);
    vm_attach(ctx, "trace", t, before_edge, nullptr, release);
    return 0;
}

// Segments recorded so far (the last one still open).
extern "C" uint64_t trace_count(vm_ctx *ctx) {
    Tracer *t = attached(ctx);
    return t ? t->segments.size() : 0;
}

// Copies segments [first, first + n) as (start, key, macs, stalls) quadruples into out.
extern "C" void trace_read(vm_ctx *ctx, uint64_t first, uint64_t n, uint64_t *out) {
    Tracer *t = attached(ctx);
    for (uint64_t i = 0; t && i < n && first + i < t->segments.size(); i++) {
        const Segment &s = t->segments[first + i];
        out[4 * i] = s.start;
        out[4 * i + 1] = s.key;
        out[4 * i + 2] = s.count[0];
        out[4 * i + 3] = s.count[1];
    }
}
