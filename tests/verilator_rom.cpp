// A device model compiled into a Verilator model by tests/test_verilator_engine.py: a ROM
// that Python fills and that answers the design's `addr` output on its `data` input.
#include <cstdint>
#include <vector>

#include "vm.h"

namespace {

struct Rom {
    std::vector<uint32_t> words;
    std::vector<uint64_t> sampled_addrs;
    int addr;
    int data;
};

void drive(vm_ctx *ctx, Rom *rom) {
    uint64_t addr = vm_get64(ctx, rom->addr);
    vm_set64(ctx, rom->data, addr < rom->words.size() ? rom->words[addr] : 0);
}

void before_edge(vm_ctx *ctx, void *arg) {
    Rom *rom = static_cast<Rom *>(arg);
    rom->sampled_addrs.push_back(vm_get64(ctx, rom->addr));
}

void after_edge(vm_ctx *ctx, void *arg) { drive(ctx, static_cast<Rom *>(arg)); }

void release(void *arg) { delete static_cast<Rom *>(arg); }

}  // namespace

extern "C" int rom_attach(vm_ctx *ctx, uint32_t size) {
    Rom *rom = new Rom{std::vector<uint32_t>(size), {}, vm_port_index("addr"),
                       vm_port_index("data")};
    if (rom->addr < 0 || rom->data < 0 || vm_attach(ctx, "rom", rom, before_edge, after_edge,
                                                    release) != 0) {
        delete rom;
        return -1;
    }
    return 0;
}

extern "C" void rom_write(vm_ctx *ctx, uint32_t index, uint32_t value) {
    Rom *rom = static_cast<Rom *>(vm_attached(ctx, "rom"));
    if (index >= rom->words.size()) return;
    rom->words[index] = value;
    // The design may be reading this word right now.
    drive(ctx, rom);
}

// The `addr` the design presented at clock edge `cycle`; all ones past the last edge.
extern "C" uint64_t rom_sampled_addr(vm_ctx *ctx, uint32_t cycle) {
    const Rom *rom = static_cast<Rom *>(vm_attached(ctx, "rom"));
    return cycle < rom->sampled_addrs.size() ? rom->sampled_addrs[cycle] : ~0ull;
}
