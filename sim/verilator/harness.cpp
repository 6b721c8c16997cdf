// Generic harness around the Verilated wrapper module vm_top; implements vm.h.
//
// vm_ports.inc is generated per design. It defines VM_HAS_CLK, VM_HAS_RST, VM_NUM_PORTS,
// vm_port_infos[] (name, width, direction per port) and vm_bind_ports(), which hands each
// port's storage in the model to vm_bind().
#include <cstring>
#include <string>
#include <vector>

#include "Vvm_top.h"
#include "verilated.h"
#include "vm.h"

namespace {

struct vm_port_info {
    const char *name;
    int width;
    int is_input;
};

// Verilator stores a port in the narrowest of these that fits its width.
enum vm_kind { KIND_C, KIND_S, KIND_I, KIND_Q, KIND_W };

struct vm_port {
    void *data;
    vm_kind kind;
};

void vm_bind(vm_port &port, CData &value) { port = {&value, KIND_C}; }
void vm_bind(vm_port &port, SData &value) { port = {&value, KIND_S}; }
void vm_bind(vm_port &port, IData &value) { port = {&value, KIND_I}; }
void vm_bind(vm_port &port, QData &value) { port = {&value, KIND_Q}; }
template <std::size_t N> void vm_bind(vm_port &port, VlWide<N> &value) {
    port = {value.data(), KIND_W};
}

#include "vm_ports.inc"

struct vm_device {
    std::string name;
    void *arg;
    vm_hook before_edge;
    vm_hook after_edge;
    vm_release release;
};

uint64_t low_mask(int width) { return width >= 64 ? ~0ull : (1ull << width) - 1; }

}  // namespace

struct vm_ctx {
    VerilatedContext context;
    Vvm_top *top;
    vm_port ports[VM_NUM_PORTS + 1];
    std::vector<vm_device> devices;
    uint64_t cycle = 0;
    // Inputs changed since the last eval: outputs read now would be stale.
    bool dirty = true;
};

static void settle(vm_ctx *ctx) {
    if (ctx->dirty) {
        ctx->top->eval();
        ctx->dirty = false;
    }
}

// The falling half-cycle is evaluated too: Verilator detects an edge against the clock
// value seen by the previous eval.
static void clock_edge(vm_ctx *ctx) {
#if VM_HAS_CLK
    ctx->top->clk = 1;
    ctx->top->eval();
    ctx->top->clk = 0;
#endif
    ctx->top->eval();
    ctx->dirty = false;
    ctx->cycle++;
}

static vm_device *find_device(vm_ctx *ctx, const char *name) {
    for (vm_device &device : ctx->devices)
        if (device.name == name) return &device;
    return nullptr;
}

extern "C" {

vm_ctx *vm_create(void) {
    vm_ctx *ctx = new vm_ctx;
    ctx->top = new Vvm_top(&ctx->context, "vm_top");
    vm_bind_ports(ctx->top, ctx->ports);
    return ctx;
}

void vm_destroy(vm_ctx *ctx) {
    for (vm_device &device : ctx->devices)
        if (device.release) device.release(device.arg);
    ctx->top->final();
    delete ctx->top;
    delete ctx;
}

int vm_num_ports(void) { return VM_NUM_PORTS; }
const char *vm_port_name(int index) { return vm_port_infos[index].name; }
int vm_port_width(int index) { return vm_port_infos[index].width; }
int vm_port_is_input(int index) { return vm_port_infos[index].is_input; }

int vm_port_index(const char *name) {
    for (int index = 0; index < VM_NUM_PORTS; index++)
        if (std::strcmp(vm_port_infos[index].name, name) == 0) return index;
    return -1;
}

void vm_set64(vm_ctx *ctx, int index, uint64_t value) {
    if (!vm_port_infos[index].is_input) return;
    const vm_port &port = ctx->ports[index];
    int width = vm_port_infos[index].width;
    value &= low_mask(width);
    switch (port.kind) {
    case KIND_C: *static_cast<CData *>(port.data) = value; break;
    case KIND_S: *static_cast<SData *>(port.data) = value; break;
    case KIND_I: *static_cast<IData *>(port.data) = value; break;
    case KIND_Q: *static_cast<QData *>(port.data) = value; break;
    case KIND_W: {
        EData *words = static_cast<EData *>(port.data);
        std::memset(words, 0, VL_WORDS_I(width) * sizeof(EData));
        words[0] = static_cast<EData>(value);
        words[1] = static_cast<EData>(value >> 32);
        break;
    }
    }
    ctx->dirty = true;
}

uint64_t vm_get64(vm_ctx *ctx, int index) {
    settle(ctx);
    const vm_port &port = ctx->ports[index];
    switch (port.kind) {
    case KIND_C: return *static_cast<CData *>(port.data);
    case KIND_S: return *static_cast<SData *>(port.data);
    case KIND_I: return *static_cast<IData *>(port.data);
    case KIND_Q: return *static_cast<QData *>(port.data);
    case KIND_W: {
        const EData *words = static_cast<EData *>(port.data);
        return words[0] | (static_cast<uint64_t>(words[1]) << 32);
    }
    }
    return 0;
}

void vm_set_words(vm_ctx *ctx, int index, const uint32_t *words) {
    if (!vm_port_infos[index].is_input) return;
    int width = vm_port_infos[index].width;
    if (ctx->ports[index].kind != KIND_W) {
        uint64_t value = words[0];
        if (width > 32) value |= static_cast<uint64_t>(words[1]) << 32;
        vm_set64(ctx, index, value);
        return;
    }
    EData *dest = static_cast<EData *>(ctx->ports[index].data);
    int count = VL_WORDS_I(width);
    std::memcpy(dest, words, count * sizeof(EData));
    if (width % 32) dest[count - 1] &= (1u << (width % 32)) - 1;
    ctx->dirty = true;
}

void vm_get_words(vm_ctx *ctx, int index, uint32_t *words) {
    int width = vm_port_infos[index].width;
    if (ctx->ports[index].kind != KIND_W) {
        uint64_t value = vm_get64(ctx, index);
        words[0] = static_cast<uint32_t>(value);
        if (width > 32) words[1] = static_cast<uint32_t>(value >> 32);
        return;
    }
    settle(ctx);
    std::memcpy(words, ctx->ports[index].data, VL_WORDS_I(width) * sizeof(EData));
}

void vm_eval(vm_ctx *ctx) {
    ctx->dirty = true;
    settle(ctx);
}

void vm_tick(vm_ctx *ctx, uint64_t n) {
    if (ctx->devices.empty()) {
        settle(ctx);
        for (uint64_t i = 0; i < n; i++) clock_edge(ctx);
        return;
    }
    for (uint64_t i = 0; i < n; i++) {
        settle(ctx);
        for (vm_device &device : ctx->devices)
            if (device.before_edge) device.before_edge(ctx, device.arg);
        settle(ctx);
        clock_edge(ctx);
        for (vm_device &device : ctx->devices)
            if (device.after_edge) device.after_edge(ctx, device.arg);
    }
}

#if VM_HAS_RST
// The design's reset is a register of vm_top, loaded from the rst input on a rising edge of
// rst_load (see _wrapper_verilog in verilator_engine.py).
static void load_reset(vm_ctx *ctx, int value) {
    ctx->top->rst = value;
    ctx->top->rst_load = 1;
    ctx->top->eval();
    ctx->top->rst_load = 0;
    ctx->top->eval();
    ctx->dirty = false;
}
#endif

int vm_reset(vm_ctx *ctx) {
#if VM_HAS_RST
    load_reset(ctx, 1);
    clock_edge(ctx);
    load_reset(ctx, 0);
    ctx->cycle = 0;
    return 0;
#else
    (void)ctx;
    return -1;
#endif
}

uint64_t vm_cycle(vm_ctx *ctx) { return ctx->cycle; }

int vm_attach(vm_ctx *ctx, const char *name, void *arg, vm_hook before_edge,
              vm_hook after_edge, vm_release release) {
    if (find_device(ctx, name)) return -1;
    ctx->devices.push_back({name, arg, before_edge, after_edge, release});
    return 0;
}

void *vm_attached(vm_ctx *ctx, const char *name) {
    vm_device *device = find_device(ctx, name);
    return device ? device->arg : nullptr;
}

}  // extern "C"
