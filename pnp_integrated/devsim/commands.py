"""``pnpp simulate``: device simulators."""

from __future__ import annotations

import sys
import time

import click

from .cns import simulate_cns

simulate = click.Group("simulate", help="Device simulators")
simulate.add_command(simulate_cns)


@simulate.command("pnp")
@click.option("--devices", "count", type=click.IntRange(1, 100_000), default=10, show_default=True,
              help="how many devices to play")
@click.option("--https", "use_https", is_flag=True, help="use the HTTPS port (trusting the node's CA)")
@click.option("--url", default=None, help="gateway base URL (default: the VIP on the HTTP or HTTPS port)")
@click.option("--serial-prefix", default="SIM", show_default=True, help="serials are <prefix><number>")
@click.option("--pid", default="CSR1000V", show_default=True, help="product id in the UDI")
@click.option("--version", "sw_version", default="17.3.4a", show_default=True, help="software version they run")
@click.option("--concurrency", type=click.IntRange(1, 5000), default=100, show_default=True,
              help="devices talking at the same time")
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="probability that a device fails a request (errorInfo)")
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="probability that a device answers a request with a protocol fault")
@click.option("--time-scale", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="backoff and reload waits are multiplied by this")
@click.option("--timeout", type=click.FloatRange(1), default=300.0, show_default=True,
              help="seconds each device may take before it is reported as waiting")
def simulate_pnp(count: int, use_https: bool, url: str | None, serial_prefix: str, pid: str, sw_version: str,
                 concurrency: int, error_rate: float, fault_rate: float, time_scale: float, timeout: float) -> None:
    """Play COUNT Open PnP devices through day 0 and print what happened (exit 1 if any was not provisioned)."""
    from ..cli import settings_or_exit
    from ..tls import client_context
    from .pnp import SimulatedDevice, format_reports, simulate

    settings = settings_or_exit()
    if url is None:
        port = settings.https_port if use_https else settings.http_port
        host = f"[{settings.vip}]" if ":" in settings.vip else settings.vip
        url = f"{'https' if use_https else 'http'}://{host}:{port}"
    context = None
    if url.startswith("https:"):
        try:
            context = client_context(settings)
        except OSError as exc:
            raise click.ClickException(f"cannot read the node's CA certificate ({exc}); run on the node") from exc
    devices = [SimulatedDevice(serial=f"{serial_prefix}{n:06d}", pid=pid, version=sw_version, error_rate=error_rate,
                               fault_rate=fault_rate) for n in range(1, count + 1)]
    click.echo(f"simulating {count} Open PnP devices against {url} ...")
    started = time.monotonic()
    reports = simulate(devices, url, context=context, concurrency=concurrency, time_scale=time_scale,
                       deadline=timeout)
    click.echo(format_reports(reports, time.monotonic() - started))
    sys.exit(0 if all(r.ok for r in reports) else 1)
