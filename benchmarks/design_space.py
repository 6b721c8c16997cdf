"""The design-space table: one frame through ``m3vit perf`` on each MAC array shape (and port count).

Usage (from the repository root; each edge-moe shape builds its own Verilator model, minutes each)::

    .venv/bin/python benchmarks/design_space.py --points 16x16 16x32:2 16x64 16x64:4 --json design-space.json

A point is ``RxC`` or ``RxC:P`` (P AXI ports for the weights, default 1). It quantises the model
once (``m3vit quantize``), runs ``m3vit perf --array RxC --ports P --artifact ... --json ...`` per
point, and prints a Markdown table of what the README shows:
cycles, latency at 300 MHz, MAC utilisation, DRAM stall cycles, DRAM bytes over the minimum, the
array's DSPs (one DSP48E2 per processing element) and their share of the xczu7ev's 1,728, and
whether the frame was bit-exact with golden and its routing equal. The perf runs are separate
processes, so a failing point is reported and the others still run.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from boards.synth import XCZU7EV  # noqa: E402  (after the path is set, for running as a script)

COLUMNS = ("array", "ports", "array DSPs", "cycles", "ms at 300 MHz", "MAC utilisation", "DRAM stall cycles",
           "DRAM bytes / min", "bit-exact, routing")


def _row(report):
    dsp = report["array_dsp"]
    return (report["array"], str(report.get("ports", 1)), f"{dsp:,} ({100 * dsp / XCZU7EV['dsp']:.0f} %)",
            f"{report['cycles']:,}", f"{report['latency_ms_at_300mhz']:.2f}", f"{report['mac_utilization']:.3f}",
            f"{report['dram_stall_cycles']:,}", f"{report['dram_bytes'] / report['dram_bytes_min']:.3f}",
            "yes" if report["bit_exact"] and report["routing_matches"] else "**NO**")


def markdown(reports):
    """The table as Markdown lines."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return lines + ["| " + " | ".join(_row(r)) + " |" for r in reports]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="edge-moe")
    p.add_argument("--weights", metavar="DIR", help="weight folder (default: built-in weights)")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--points", nargs="+", default=["16x16", "16x32:2", "16x64", "16x64:4"], metavar="RxC[:P]")
    p.add_argument("--engine", default="verilator", choices=("verilator", "pysim"))
    p.add_argument("--json", metavar="FILE", help="also write every point's perf report")
    args = p.parse_args(argv)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        p.error(f"--json {args.json}: no such folder")
    m3vit = [sys.executable, "-m", "cli"]
    model = ["--config", args.config] + (["--weights", args.weights] if args.weights else [])
    reports, failed = [], []
    with tempfile.TemporaryDirectory(prefix="m3vit-dse-") as tmp:
        artifact = Path(tmp) / "artifact.npz"
        start = time.perf_counter()
        subprocess.run(m3vit + ["quantize", *model, "--out", str(artifact)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        print(f"quantised {args.config} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        for point in args.points:
            shape, _, ports = point.partition(":")
            ports = ports or "1"
            out = Path(tmp) / f"{shape}-{ports}.json"
            cmd = m3vit + ["perf", *model, "--task", str(args.task), "--artifact", str(artifact), "--array", shape,
                           "--ports", ports, "--engine", args.engine, "--json", str(out)]
            start = time.perf_counter()
            run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            took = time.perf_counter() - start
            if run.returncode not in (0, 1) or not out.exists():
                tail = (run.stderr.strip().splitlines() or ["(no message)"])[-1]
                failed.append(f"{point}: {tail}")
                print(f"{point}: FAILED after {took:.0f} s: {tail}", file=sys.stderr, flush=True)
                continue
            reports.append(json.loads(out.read_text()))
            print(f"{point}: {reports[-1]['cycles']:,} cycles, done in {took:.0f} s", file=sys.stderr, flush=True)
    print("\n".join(markdown(reports)))
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1) + "\n")
    for line in failed:
        print(f"failed: {line}")
    return 1 if failed or not all(r["bit_exact"] and r["routing_matches"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
