"""`tunnel bench --runs N`: kinds measured in turns, medians with their spread, the machine named (issue 9, item 13).

The measurement itself needs root, namespaces and minutes (tunnel_lab/bench.py
`_measure`); what is checked here is what it is made into, with a fake
measurement at that seam: the order of the runs, the medians, minimums,
maximums and ratios, and the machine line (CPU model, AEAD speed).
"""

from __future__ import annotations

import math

from click.testing import CliRunner

from tunnel.cli import main
from tunnel_lab import bench


def test_the_kinds_take_turns_run_by_run():
    assert bench.schedule(["tunnel", "wireguard-go"], 3) == [
        (1, "tunnel"), (1, "wireguard-go"), (2, "tunnel"), (2, "wireguard-go"), (3, "tunnel"), (3, "wireguard-go")]


def test_rounds_measure_in_turns_and_keep_every_run():
    calls = []

    def measure(kind: str) -> dict:
        calls.append(kind)
        n = len(calls)
        return {"tcp": 100.0 * n, "rtt_ms": 1.0}

    results = bench.bench_rounds(["tunnel", "wireguard-go"], 3, measure, echo=lambda *_: None)
    assert calls == ["tunnel", "wireguard-go"] * 3
    assert [r["tcp"] for r in results["tunnel"]] == [100.0, 300.0, 500.0]
    assert [r["tcp"] for r in results["wireguard-go"]] == [200.0, 400.0, 600.0]


RESULTS = {
    "tunnel": [{"tcp": 1500.0, "tcp_r": 1400.0, "rtt_ms": 1.2, "rtt_load_ms": math.nan, "cpu_s_per_gb": 9.0},
               {"tcp": 1700.0, "tcp_r": 1450.0, "rtt_ms": 1.0, "rtt_load_ms": 2.0, "cpu_s_per_gb": 10.0},
               {"tcp": 1600.0, "tcp_r": 1300.0, "rtt_ms": 1.1, "rtt_load_ms": 3.0, "cpu_s_per_gb": 8.0}],
    "wireguard-go": [{"tcp": 800.0, "tcp_r": 700.0, "rtt_ms": 0.5, "rtt_load_ms": 4.0, "cpu_s_per_gb": 16.0},
                     {"tcp": 900.0, "tcp_r": 750.0, "rtt_ms": 0.7, "rtt_load_ms": 5.0, "cpu_s_per_gb": 14.0},
                     {"tcp": 700.0, "tcp_r": 725.0, "rtt_ms": 0.6, "rtt_load_ms": 6.0, "cpu_s_per_gb": 15.0}],
}


def test_medians_with_minimum_and_maximum_and_the_ratio_of_medians():
    summary = bench.summarize(RESULTS)
    assert summary["tunnel"]["tcp"] == (1600.0, 1500.0, 1700.0)
    assert summary["tunnel"]["rtt_load_ms"] == (2.5, 2.0, 3.0)  # a run without the figure is left out
    assert summary["tunnel"]["tcp_p4"] is None
    assert summary["wireguard-go"]["tcp"] == (800.0, 700.0, 900.0)
    ratios = bench.ratios(summary, "tunnel")
    assert ratios["tcp"] == 2.0 and ratios["cpu_s_per_gb"] == 9.0 / 15.0 and "tcp_p4" not in ratios
    text = bench.report(RESULTS)
    assert "1600 (1500-1700)" in text and "tunnel (3)" in text and "wireguard-go (3)" in text
    assert "2.50 (2.00-3.00)" in text and "9.0 (8.0-10.0)" in text
    assert "ratio of medians: tcp 2.00x" in text and "cpu_s_per_gb 0.60x" in text


def test_the_machine_is_named_with_its_aead_speed():
    assert bench.cpu_model()
    us = bench.aead_microseconds(rounds=2, count=200)
    assert 0 < us < 1000
    line = bench.machine_line()
    assert "ChaCha20-Poly1305 encrypt of 1420 bytes" in line and "µs" in line and "CPUs" in line


def test_the_command_takes_runs():
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0 and "--runs" in result.output
    result = CliRunner().invoke(main, ["bench", "--runs", "0"])
    assert result.exit_code != 0 and "Traceback" not in result.output
