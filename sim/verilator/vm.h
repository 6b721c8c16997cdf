// C interface of a Verilator model built by sim/verilator_engine.py.
//
// Python loads it through ctypes; extra C++ sources compiled into the same library
// (device models such as a DRAM behind an AXI port) include this header and use the
// same calls. It deliberately names no Verilator type, so extra sources do not
// depend on the generated model's headers.
//
// A port is addressed by its index in the design's flattened signature; look the
// index up once by its Amaranth name ("__"-joined path) with vm_port_index().
// Values wider than 64 bits travel as little-endian arrays of 32-bit words.
#ifndef VM_H
#define VM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vm_ctx vm_ctx;

// Called once per clock cycle with the pointer given to vm_attach().
typedef void (*vm_hook)(vm_ctx *ctx, void *arg);
typedef void (*vm_release)(void *arg);

vm_ctx *vm_create(void);
void vm_destroy(vm_ctx *ctx);

int vm_num_ports(void);
const char *vm_port_name(int index);
int vm_port_width(int index);
int vm_port_is_input(int index);
// -1 when the design has no port of that name.
int vm_port_index(const char *name);

// Writing an output port is ignored; the value is truncated to the port's width.
void vm_set64(vm_ctx *ctx, int index, uint64_t value);
// Ports wider than 64 bits give their low 64 bits. Settles logic changed by sets first.
uint64_t vm_get64(vm_ctx *ctx, int index);
void vm_set_words(vm_ctx *ctx, int index, const uint32_t *words);
void vm_get_words(vm_ctx *ctx, int index, uint32_t *words);

// Settles combinational logic after inputs changed (vm_get* and vm_tick do it on demand).
void vm_eval(vm_ctx *ctx);
// Runs n rising clock edges, calling the attached hooks around each one.
void vm_tick(vm_ctx *ctx, uint64_t n);
// One edge with the sync reset asserted, hooks not called; the cycle counter restarts at 0.
// Returns 0, or -1 where the design has no reset.
int vm_reset(vm_ctx *ctx);
uint64_t vm_cycle(vm_ctx *ctx);

// Attaches a device model under a unique name. Per cycle, every before_edge hook runs with
// the design settled just before the rising edge (inputs set now are sampled by this edge:
// use it to observe which handshakes complete), then the edge, then every after_edge hook
// (inputs set now are those the design sees during the next cycle). Either hook may be NULL;
// release, when not NULL, frees arg when the model is destroyed. Returns 0, or -1 when the
// name is taken.
int vm_attach(vm_ctx *ctx, const char *name, void *arg, vm_hook before_edge,
              vm_hook after_edge, vm_release release);
// The arg attached under name, or NULL.
void *vm_attached(vm_ctx *ctx, const char *name);

#ifdef __cplusplus
}
#endif

#endif
