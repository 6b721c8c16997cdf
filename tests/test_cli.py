"""The m3vit command on good and bad input: clear one-line errors, no tracebacks."""

import io
import json

import numpy as np
import pytest

from cli.progress import Progress
from tests.cli_helpers import run_m3vit


def test_help_lists_subcommands():
    r = run_m3vit("--help")
    assert r.returncode == 0
    for sub in ("golden", "numerics", "quantize"):
        assert sub in r.stdout


@pytest.mark.parametrize("args, message", [
    (["golden", "--config", "tiny", "--task", "7"], "unknown task 7"),
    (["golden", "--config", "nope"], "unknown config 'nope'"),
    (["golden", "--config", "tiny", "--weights", "/no/such/folder"], "does not exist"),
    (["golden", "--config", "tiny", "--artifact", "/no/such.npz"], "does not exist"),
])
def test_bad_input_gives_clear_error(args, message):
    r = run_m3vit(*args)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_wrong_image_shape(tmp_path):
    path = tmp_path / "img.npy"
    np.save(path, np.zeros((3, 16, 16), np.float32))
    r = run_m3vit("golden", "--config", "tiny", "--image", str(path))
    assert r.returncode == 2 and "expects [3, 32, 64]" in r.stderr and "Traceback" not in r.stderr


def test_numerics_json_and_quantize(tmp_path):
    out = tmp_path / "n.json"
    r = run_m3vit("numerics", "--config", "tiny", "--json", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert {"layers", "routing_agreement", "gelu_max_lsb_err", "softmax_max_abs_err"} <= set(report)
    assert {"layer", "task", "cosine", "max_abs_err"} <= set(report["layers"][0])
    assert report["gelu_max_lsb_err"] <= 1.0 and report["softmax_max_abs_err"] <= 2 ** -8
    art = tmp_path / "tiny.npz"
    r = run_m3vit("quantize", "--config", "tiny", "--out", str(art))
    assert r.returncode == 0 and art.is_file()
    r = run_m3vit("golden", "--config", "tiny", "--task", "1", "--artifact", str(art))
    assert r.returncode == 0 and "output features: cosine" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["simulate", "--config", "tiny", "--task", "0", "5"], "unknown task 5"),
    (["perf", "--config", "tiny", "--task", "-1"], "unknown task -1"),
    (["simulate", "--config", "tiny", "--artifact", "/no/such.npz"], "does not exist"),
    (["perf", "--config", "tiny", "--timeline", "frame.pdf"], "must end in .png or .svg"),
    (["perf", "--config", "tiny", "--timeline", "/no/such/folder/frame.png"], "does not exist"),
    (["simulate", "--config", "tiny", "--ready-drop", "1.5"], "ar_drop is a probability in [0, 1)"),
    (["simulate", "--config", "tiny", "--bus-error", "program"], "or one of weights, image, output"),
    (["simulate", "--config", "tiny", "--array", "8x32", "--ports", "4"], "at most the tile's 2 banks"),
    (["perf", "--config", "tiny", "--ports", "3", "--array", "8x64"], "ports must be one of 1, 2, 4"),
    (["perf", "--config", "tiny", "--dram-bytes-per-cycle", "0"], "takes a positive number of bytes per cycle"),
    (["simulate", "--config", "tiny", "--dram-bytes-per-cycle", "inf"], "takes a positive number of bytes"),
])
def test_simulate_bad_input(args, message):
    r = run_m3vit(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize("argv, message", [
    (["--r-gap", "-0.5"], "r_gap is a probability in [0, 1)"),
    (["--dram-latency", "80-40"], "read latency range 80..40 is empty"),
    (["--dram-latency", "fast"], "--dram-latency takes CYCLES or MIN-MAX"),
    (["--dram-latency", "0"], "at least 1 cycle"),
    (["--refresh", "100:100"], "the length must be below the period"),
    (["--refresh", "100"], "--refresh takes two integers A:B"),
    (["--bus-error", "0x2000:0x1000"], "is empty or negative"),
])
def test_dram_options_bad_values(argv, message):
    """The DRAM model's options, parsed as ``m3vit simulate`` parses them (in process: cheap)."""
    import argparse

    from cli import UserError
    from cli.sim import add_dram_options, dram_options

    p = argparse.ArgumentParser()
    add_dram_options(p)
    with pytest.raises(UserError) as err:
        dram_options(p.parse_args(argv))
    assert message in str(err.value)


def test_dram_options_values():
    import argparse

    from cli.sim import add_dram_options, dram_options
    from sim.dram import DECERR, Impolite

    p = argparse.ArgumentParser()
    add_dram_options(p)
    assert dram_options(p.parse_args([])) == (40, None)
    argv = ["--dram-latency", "30-90", "--ready-drop", "0.25", "--r-gap", "0.1", "--refresh", "2340:105",
            "--bus-error", "output", "--bus-error-resp", "decerr", "--dram-seed", "5"]
    assert dram_options(p.parse_args(argv)) == (30, Impolite(
        seed=5, ar_drop=0.25, aw_drop=0.25, w_drop=0.25, r_gap=0.1, latency_max=90, refresh_period=2340,
        refresh_length=105, error_range="output", error_resp=DECERR))


def test_simulate_rejects_malformed_or_foreign_artifact(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an npz archive")
    r = run_m3vit("simulate", "--config", "tiny", "--artifact", str(junk))
    assert r.returncode == 2 and "not a readable" in r.stderr and "Traceback" not in r.stderr
    tiny = tmp_path / "tiny.npz"
    assert run_m3vit("quantize", "--config", "tiny", "--out", str(tiny)).returncode == 0
    r = run_m3vit("simulate", "--config", "edge-moe", "--artifact", str(tiny))
    assert r.returncode == 2 and "is for config 'tiny'" in r.stderr


def test_perf_json_tiny_pysim(tmp_path):
    """The perf report's keys, from a real (small) simulation of a saved artifact."""
    artifact, out, figure = tmp_path / "tiny.npz", tmp_path / "perf.json", tmp_path / "frame.png"
    assert run_m3vit("quantize", "--config", "tiny", "--out", str(artifact)).returncode == 0
    r = run_m3vit("perf", "--config", "tiny", "--task", "1", "--engine", "pysim", "--artifact", str(artifact),
                  "--json", str(out), "--timeline", str(figure))
    assert r.returncode == 0, r.stderr
    assert "BIT-EXACT" in r.stdout
    report = json.loads(out.read_text())
    for key in ("cycles", "latency_ms_at_300mhz", "mac_utilization", "dram_bytes", "dram_bytes_min",
                "experts_run", "engine", "routing_matches", "routing_mismatches"):
        assert key in report
    assert report["engine"] == "pysim" and report["bit_exact"]
    assert report["routing_matches"] and "routing written to DRAM: 0 tokens' experts differ" in r.stdout
    assert report["array"] == "8x8" and report["ports"] == 1
    assert report["dram_stall_cycles"] == report["stall_cycles"] > 0
    assert report["latency_ms_at_300mhz"] == pytest.approx(report["cycles"] / 300e3)
    assert report["dram_bytes_min"] <= report["dram_bytes"]
    assert report["mac_utilization"] == pytest.approx(report["tile_fill"] * report["array_busy_fraction"])
    phases = report["phases"]
    assert sum(row["cycles"] for row in phases.values()) == report["cycles"]
    assert sum(row["mac_cycles"] for row in phases.values()) == report["array_cycles"]
    assert "cycles by phase" in r.stdout
    # Not a terminal: one plain line per stage on stderr.
    for stage in ("golden", "building the accelerator for pysim", "frame 1 of 1: task 1"):
        assert any(line.startswith(stage) and " done in " in line for line in r.stderr.splitlines()), stage
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream", [io.StringIO, _Terminal])
def test_progress_one_line_per_stage(stream):
    """A log gets ``what ... done in``/``failed in`` lines; a terminal gets tqdm's line per stage
    with the simulated cycles."""
    file = stream()
    progress = Progress(file)
    with progress.stage("frame 1 of 1", simulates=True):
        progress.cycles(512)
        progress.cycles(1024)
    with pytest.raises(RuntimeError), progress.stage("building"):
        raise RuntimeError("compiler failed")
    text = file.getvalue()
    if stream is _Terminal:
        assert "frame 1 of 1: 1.02k cycles" in text and "building: " in text
    else:
        assert text.splitlines()[0].startswith("frame 1 of 1 ... done in ")
        assert text.splitlines()[1].startswith("building ... failed in ")


@pytest.mark.parametrize("config, argv, shape, ports", [
    ("edge-moe", [], "16x64", 4),
    ("edge-moe", ["--array", "16x16"], "16x16", 1),
    ("edge-moe", ["--array", "16x32", "--ports", "2"], "16x32", 2),
    ("edge-moe", ["--lanes", "8"], "8x8", 1),
    ("tiny", [], "8x8", 1),
])
def test_simulate_runs_the_board_build_unless_told(config, argv, shape, ports):
    """Without a shape, ``simulate`` and ``perf`` run what the board runs (edge-moe fits its build;
    tiny, far smaller, gets the smallest build); with one, the smallest build of that shape."""
    from cli import build_parser
    from cli.sim import build_for
    from gateware.program import Capacity
    from model.config import get_config

    for command in ("simulate", "perf"):
        args = build_parser().parse_args([command, "--config", config, *argv])
        cap = build_for(get_config(config), args)
        assert (cap.shape, cap.ports) == (shape, ports)
        assert (cap == Capacity.board()) == (config == "edge-moe" and not argv)


def test_simulate_ports_alone_keep_the_square_array():
    """``--ports`` alone shapes a square build, which four ports do not fit: a clear error."""
    from cli import UserError, build_parser
    from cli.sim import build_for
    from model.config import get_config

    args = build_parser().parse_args(["simulate", "--config", "edge-moe", "--ports", "4"])
    with pytest.raises(UserError, match="at most the tile.s 1 bank of 16 bytes .cols / 16. on a 16x16 array"):
        build_for(get_config("edge-moe"), args)
