"""``pnpp simulate``: device simulators."""

from __future__ import annotations

import hashlib
import io
import sys
import time
from typing import Any

import click

from ..devsim.cns import CnsDevice, DeviceReport, step_table
from .progress import DeviceProgress

simulate = click.Group("simulate", help="Device simulators")


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
    from ..devsim.pnp import SimulatedDevice, format_reports, simulate
    from ..tls import client_context
    from .common import settings_or_exit

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
    with DeviceProgress(count) as progress:
        reports = simulate(devices, url, context=context, concurrency=concurrency, time_scale=time_scale,
                           deadline=timeout, on_report=lambda report: progress.finished(report.ok))
    click.echo(format_reports(reports, time.monotonic() - started))
    sys.exit(0 if all(r.ok for r in reports) else 1)


# ---- demo profile -----------------------------------------------------------------------------------------------
DEMO_PROFILE = "devsim-cns"
DEMO_CONFIG = ("hostname {{ serial }}\nip domain name devsim.example\n"
               "interface GigabitEthernet0/0/0\n description uplink of {{ serial }}\n")
DEMO_POST = "ntp server 192.0.2.1\nlogging host 192.0.2.2\nbanner motd ^provisioned by pnp-integrated^\n"
DEMO_IMAGE = "devsim-universalk9.17.03.04a.SPA.bin"
DEMO_IMAGE_VERSION = "17.3.4a"
DEMO_IMAGE_BYTES = 256 * 1024


def ensure_demo_profile(serials: list[str], with_image: bool) -> list[str]:
    """Create or update the demo profile claiming ``serials`` (app context needed); lines saying what was done.

    Devices of these serials whose job already ended are provisioned again from the start, so a demo can be rerun.
    """
    from sqlalchemy import select

    from ..models import Device, Image, Profile, ProvisioningJob, db
    from ..provisioning import operations
    from ..provisioning.images import store_image
    from ..provisioning.types import TERMINAL_STATES

    said: list[str] = []
    profile = db.session.scalar(select(Profile).where(Profile.name == DEMO_PROFILE))
    if profile is None:
        profile = Profile(name=DEMO_PROFILE, match_serials=[])
        db.session.add(profile)
        said.append(f"created profile {DEMO_PROFILE}")
    image = None
    if with_image:
        image = db.session.scalar(select(Image).where(Image.name == DEMO_IMAGE))
        if image is None:
            # Deterministic content, so its MD5 is the same on every node.
            content = hashlib.sha256(DEMO_IMAGE.encode()).digest() * (DEMO_IMAGE_BYTES // 32)
            image = store_image(io.BytesIO(content), DEMO_IMAGE, DEMO_IMAGE_VERSION, actor="pnpp simulate cns")
            said.append(f"added image {DEMO_IMAGE} (version {DEMO_IMAGE_VERSION}, {image.size} bytes)")
    known = set(profile.match_serials or [])
    profile.match_serials = [*(profile.match_serials or []), *(s for s in serials if s not in known)]
    profile.config_template = DEMO_CONFIG
    profile.post_template = DEMO_POST
    profile.image_id = image.id if image is not None else None
    db.session.commit()
    rerun = 0
    for device in db.session.scalars(select(Device).where(Device.serial.in_(serials))):
        job = db.session.get(ProvisioningJob, device.current_job_id) if device.current_job_id else None
        if job is not None and job.state in TERMINAL_STATES:  # unclaimed ones are claimed on contact
            operations.reprovision(device)
            rerun += 1
    db.session.commit()
    said.append(f"profile {DEMO_PROFILE} claims {serials[0]}..{serials[-1]}: configuration template, post-PnP "
                f"template{', image ' + DEMO_IMAGE if image is not None else ', no image'}")
    if rerun:
        said.append(f"{rerun} of these devices were seen before: they are provisioned again from the start")
    return said


def node_view(serials: list[str]) -> dict[str, str]:
    """What the node's database says about each device (app context needed): unclaimed, job state and detail."""
    from sqlalchemy import select

    from ..models import Device, ProvisioningJob, db

    view: dict[str, str] = {}
    for device in db.session.scalars(select(Device).where(Device.serial.in_(serials))):
        job = db.session.get(ProvisioningJob, device.current_job_id) if device.current_job_id else None
        if job is None:
            view[device.serial] = f"{device.state.upper()}: no profile matches it"
        else:
            view[device.serial] = f"job {job.id} {job.state} at {job.step}" + (f": {job.detail}" if job.detail else "")
    return view


def unclaimed_serials(serials: list[str]) -> list[str]:
    """The serials no profile matches (app context needed)."""
    from ..provisioning.matching import match_profile

    return [s for s in serials if match_profile(s, "") is None]


# ---- pnpp simulate cns ----------------------------------------------------------------------------------------
@click.command("cns")
@click.option("--devices", "count", type=click.IntRange(1, 100_000), default=1, show_default=True,
              help="how many devices to simulate")
@click.option("--serial-prefix", default="SIM", show_default=True, help="serials are <prefix><number>")
@click.option("--host", default=None, help="gateway address (default: the VIP from the settings)")
@click.option("--dispatcher-port", type=int, default=None, help="default: cns_port_base + 1 (+2 with --tls)")
@click.option("--http-port", type=int, default=None, help="default: http_port from the settings")
@click.option("--tls", is_flag=True, help="use the TLS dispatcher and gateway ports")
@click.option("--image", "expect_image", is_flag=True,
              help="devices expect an image upgrade (with --create-profile the demo profile carries an image)")
@click.option("--create-profile", is_flag=True,
              help=f"create or update the demo profile {DEMO_PROFILE!r} claiming the simulated serials "
                   "(needs the node's database, i.e. run on the node)")
@click.option("--concurrency", type=click.IntRange(1, 2000), default=32, show_default=True,
              help="devices talking at the same time")
@click.option("--timeout", type=click.FloatRange(1), default=30.0, show_default=True,
              help="seconds a device waits for each answer or request of the gateway")
@click.option("--max-seconds", type=float, default=300.0, show_default=True, help="per-device time limit")
def simulate_cns(count: int, serial_prefix: str, host: str | None, dispatcher_port: int | None,
                 http_port: int | None, tls: bool, expect_image: bool, create_profile: bool, concurrency: int,
                 timeout: float, max_seconds: float) -> None:
    """Simulate CNS devices doing their day 0 against the gateway; prints what happened (exit 1 if any failed)."""
    from concurrent.futures import ThreadPoolExecutor

    from .common import app_or_exit, settings_or_exit

    settings = settings_or_exit()
    serials = [f"{serial_prefix}{i:05d}" for i in range(1, count + 1)]
    app = None
    if create_profile:
        app = app_or_exit()
        with app.app_context():
            for line in ensure_demo_profile(serials, expect_image):
                click.echo(line)
    else:
        app = _local_app()
        if app is not None:
            with app.app_context():
                unclaimed = unclaimed_serials(serials)
            if unclaimed:
                click.echo(f"warning: no profile matches {len(unclaimed)} of the {count} devices ({unclaimed[0]} ...): "
                           "they will be UNCLAIMED and fail. Add a profile (REST API POST /api/v1/profiles, or Prime) "
                           "or rerun with --create-profile for a demo profile.", err=True)
    port = dispatcher_port or (settings.dispatcher_tls_port if tls else settings.dispatcher_plain_port)
    devices = [CnsDevice(serial, host or settings.vip, port, http_port=http_port or settings.http_port, tls=tls,
                         expect_image=expect_image, timeout=timeout) for serial in serials]
    click.echo(f"simulating {count} CNS devices through the {'TLS' if tls else 'plain'} dispatcher "
               f"{host or settings.vip}:{port} ...")
    started = time.monotonic()

    def play(device: CnsDevice, progress: DeviceProgress) -> DeviceReport:
        report = device.run(max_seconds)
        progress.finished(report.ok)
        return report

    with DeviceProgress(count) as progress, ThreadPoolExecutor(max_workers=min(count, concurrency)) as pool:
        reports = list(pool.map(lambda device: play(device, progress), devices))
    elapsed = time.monotonic() - started
    failed = [r for r in reports if not r.ok]
    view: dict[str, str] = {}
    if failed and app is not None:
        with app.app_context():
            view = node_view([r.serial for r in failed])
    shown = reports if count <= 50 else failed
    if shown:
        click.echo(f"{'SERIAL':<14} {'RESULT':<7} {'SECONDS':>7}  STEPS")
    for r in shown:
        why = "; ".join(x for x in (r.detail, view.get(r.serial, "")) if x)
        click.echo(f"{r.serial:<14} {'ok' if r.ok else 'FAILED':<7} {r.seconds:7.2f}  {' '.join(r.steps)}"
                   + (f"  ({why})" if why else ""))
    if count > 50:
        for line in step_table(reports):
            click.echo(line)
    click.echo(f"{count - len(failed)}/{count} devices finished day 0 in {elapsed:.1f}s "
               f"({(count - len(failed)) / elapsed:.1f} per second), {len(failed)} failed")
    if failed:
        raise SystemExit(1)


def _local_app() -> Any:
    """An app on the node's database when this host has it (to say which devices will be unclaimed), else None."""
    from ..extension import create_app

    try:
        return create_app()
    except Exception:  # not on the node, or its database is not reachable: simulate blind
        return None


simulate.add_command(simulate_cns)
