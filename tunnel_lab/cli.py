"""`tunnel demo` and `tunnel bench`: each parses its arguments and calls the lab."""

from __future__ import annotations

import click

from tunnel.cli import Fail, setup_logging

from .bench import run_bench
from .demo import run_demo


@click.command()
@click.option("--seconds", default=3, show_default=True, help="Length of the throughput run.")
@click.option("-v", "--verbose", count=True)
def demo(seconds: int, verbose: int) -> None:
    """A team server (embedded SQLite registry) and a client in two namespaces: provision, connect, ping, measure."""
    setup_logging(verbose)
    failure = run_demo(seconds=seconds, echo=click.echo)
    if failure:
        raise Fail(failure)


@click.command()
@click.option("--seconds", default=10, show_default=True, help="Length of each iperf3 run.")
@click.option("--peers", default="tunnel,wireguard-go", show_default=True,
              help="Comma list of tunnels to measure: tunnel, tunnel-nooffload, tunnel-wg, wireguard-go.")
@click.option("--dropin", is_flag=True, help="Measure tunnel-wg (the drop-in) too, beside tunnel up.")
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1),
              help="Measure each kind this many times, the kinds taking turns; medians and spread are printed.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON as well.")
def bench(seconds: int, peers: str, dropin: bool, runs: int, as_json: bool) -> None:
    """Measure throughput, RTT and CPU per GB through our tunnel and wireguard-go, in one run."""
    setup_logging(0)
    kinds = [p.strip() for p in peers.split(",") if p.strip()]
    if dropin and "tunnel-wg" not in kinds:
        kinds.insert(kinds.index("tunnel") + 1 if "tunnel" in kinds else 0, "tunnel-wg")
    failure = run_bench(seconds=seconds, kinds=kinds, as_json=as_json, echo=click.echo, runs=runs)
    if failure:
        raise Fail(failure)
