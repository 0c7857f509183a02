"""The HA lab: two Prime nodes and a devices network in Linux network namespaces on one host (root only).

Topology (``<p>`` is the lab prefix, default ``pnplab``; addresses in ``<subnet>.0/24``, default ``10.77.0``)::

    root namespace: bridge <p>br, <subnet>.1 (PostgreSQL, shared by both nodes)
      |-- veth -> namespace <p>-a   eth0 <subnet>.11  Prime primary + gateway (pnpp run, PNP_HA_MODE=vip)
      |-- veth -> namespace <p>-b   eth0 <subnet>.12  Prime secondary + gateway
      '-- veth -> namespace <p>-dev eth0 <subnet>.50  simulated devices
    VIP <subnet>.100/24, moved by the simulated Prime pair (``mover="prime"``) or by keepalived (``"keepalived"``)

The lab writes ``lab.json`` in its directory so ``pnpp lab down`` (another process) can take everything down.
:class:`~.standalone.StandaloneLab` builds the other topology: a standalone gateway pair and Prime servers of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..credentials import write_secret
from .plan import MOVERS, PG_PORT, READY_TIMEOUT, STATE_FILE, LabError, LabNode, LabPlan
from .procs import alive, free_port, pg_bin, run, wait_group_gone


class HaLab:
    """Builds, drives and removes the lab. ``up`` undoes what it did when it fails half way."""

    def __init__(self, plan: LabPlan) -> None:
        self.plan = plan

    @classmethod
    def create(cls, root: Path, *, prefix: str = "pnplab", subnet: str = "10.77.0", mover: str = "prime",
               workers: int = 2, node_settings: dict[str, str] | None = None) -> HaLab:
        if mover not in MOVERS:
            raise LabError(f"mover {mover!r} must be one of {', '.join(MOVERS)}")
        if len(prefix) > 8 or not prefix.isalnum():
            raise LabError(f"prefix {prefix!r}: use up to 8 letters and digits (interface names are short)")
        root = root.resolve()
        plan = LabPlan(str(root), prefix, subnet, mover, workers, node_settings=dict(node_settings or {}),
                       pg_port=free_port(PG_PORT))
        for letter, role, host in (("a", "primary", 11), ("b", "secondary", 12)):
            plan.nodes.append(LabNode(f"prime-{letter}", f"{prefix}-{letter}", f"{subnet}.{host}", role,
                                      str(root / f"node-{letter}")))
        return cls(plan)

    @classmethod
    def load(cls, root: Path) -> HaLab:
        """The lab described by ``root/lab.json`` (a :class:`~.standalone.StandaloneLab` when it is one)."""
        from .standalone import StandaloneLab

        try:
            data = json.loads((root / STATE_FILE).read_text())
            nodes = [LabNode(**n) for n in data.pop("nodes")]
            primes = [LabNode(**n) for n in data.pop("primes", [])]
            kind = StandaloneLab if data.get("topology") == "standalone" else HaLab
            return kind(LabPlan(**data, nodes=nodes, primes=primes))
        except FileNotFoundError:
            raise LabError(f"no lab in {root} ({STATE_FILE} not found)") from None
        except (ValueError, TypeError) as exc:
            raise LabError(f"{root / STATE_FILE} is damaged ({exc}); remove namespaces by hand") from None

    def save(self) -> None:
        root = Path(self.plan.root)
        root.mkdir(parents=True, exist_ok=True)
        (root / STATE_FILE).write_text(json.dumps(asdict(self.plan), indent=2))

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def up(self) -> None:
        """Network, PostgreSQL, schema, then both nodes (primary first); returns once both answer /status."""
        if os.geteuid() != 0:
            raise LabError("the HA lab needs root (network namespaces, addresses, PostgreSQL as its own user)")
        if self.plan.mover == "keepalived" and shutil.which("keepalived") is None:
            raise LabError("keepalived is not installed: apt-get install -y keepalived (or use --mover prime)")
        self.save()
        try:
            self.build_network()
            self.start_postgres()
            self.migrate()
            for node in self.plan.nodes:
                self.start_node(node.name)
            for node in self.plan.nodes:
                self.wait_ready(node.name)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop every process of the lab, PostgreSQL, and remove the namespaces and the bridge (never raises)."""
        for namespace, _ in self.plan.members:
            self._kill_namespace(namespace)
            # The veth pair goes with its outer end at once; a deleted namespace frees it only later.
            run("ip", "link", "del", self._outer(namespace), check=False)
            run("ip", "netns", "del", namespace, check=False)
        run("ip", "link", "del", self.plan.bridge, check=False)
        self.stop_postgres()
        for node in (*self.plan.nodes, *self.plan.primes):
            node.pid = node.keepalived_pid = 0
        if Path(self.plan.root).exists():
            self.save()

    # ---- network ------------------------------------------------------------------------------------------------
    def build_network(self) -> None:
        p = self.plan
        run("ip", "link", "add", p.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{p.gateway_ip}/24", "dev", p.bridge)
        run("ip", "link", "set", p.bridge, "up")
        for namespace, address in p.members:
            outer = self._outer(namespace)
            run("ip", "netns", "add", namespace)
            run("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            run("ip", "link", "set", outer, "master", p.bridge)
            run("ip", "link", "set", outer, "up")
            self.exec(namespace, "ip", "link", "set", "lo", "up")
            self.exec(namespace, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
            self.exec(namespace, "ip", "link", "set", "eth0", "up")
            self.exec(namespace, "ip", "route", "add", "default", "via", p.gateway_ip)

    def _outer(self, namespace: str) -> str:
        """The bridge end of a namespace's veth (pnplab-a -> pnplaba)."""
        return f"{self.plan.prefix}{namespace.rsplit('-', 1)[1]}"

    def exec(self, namespace: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside a lab namespace."""
        return run("ip", "netns", "exec", namespace, *cmd, check=check)

    def vip_holders(self) -> list[str]:
        """Names of the nodes whose eth0 carries the VIP right now."""
        holders = []
        for node in self.plan.nodes:
            done = self.exec(node.namespace, "ip", "-o", "addr", "show", "dev", "eth0", check=False)
            if f" {self.plan.vip}/" in done.stdout:
                holders.append(node.name)
        return holders

    # ---- what the lab's database and Prime sinks hold (tests and benchmarks read them) ----------------------------
    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one SQL statement on the lab's PostgreSQL."""
        import psycopg

        with psycopg.connect(self.plan.database_url.replace("postgresql+psycopg", "postgresql")) as conn:
            return [tuple(row) for row in conn.execute(sql, params or None).fetchall()]

    def job_states(self, serial_prefix: str) -> dict[str, str]:
        """serial -> state of the device's current job ("none" before its first contact)."""
        rows = self.query("SELECT d.serial, COALESCE(j.state, 'none') FROM devices d LEFT JOIN jobs j "
                           "ON j.id = d.current_job_id WHERE d.serial LIKE %s", serial_prefix + "%")
        return {str(serial): str(state) for serial, state in rows}

    def outbox(self) -> list[tuple[str, bool]]:
        """(event id, sent to Prime) of every outbox row, oldest first."""
        rows = self.query("SELECT event_id, sent_at IS NOT NULL FROM outbox ORDER BY id")
        return [(str(event_id), bool(sent)) for event_id, sent in rows]

    def prime_data_dirs(self) -> list[Path]:
        """The data directories of the lab's simulated Prime servers (here: the nodes')."""
        return [Path(node.data_dir) for node in self.plan.nodes]

    def prime_event_ids(self) -> set[str]:
        """Ids of the events the Prime sinks of the lab received (every Prime server's, de-duplicated)."""
        from ..prime.sink import EventStore

        ids: set[str] = set()
        for data_dir in self.prime_data_dirs():
            path = data_dir / "prime" / "events.sqlite3"
            if path.exists():
                store = EventStore(path)
                try:
                    ids.update(e.event_id for e in store.events())
                finally:
                    store.close()
        return ids

    def set_link(self, name: str, up: bool) -> None:
        """Plug or unplug a node's cable (its veth on the bridge)."""
        run("ip", "link", "set", self._outer(self.plan.node(name).namespace), "up" if up else "down")

    # ---- PostgreSQL ---------------------------------------------------------------------------------------------
    def start_postgres(self) -> None:
        # Its own directory outside the lab's: the lab directory may not be reachable for the postgres user.
        root = Path(tempfile.mkdtemp(prefix=f"{self.plan.prefix}-pg-"))
        shutil.chown(root, "postgres", "postgres")
        data = root / "data"
        self.plan.pg_dir = str(data)
        self.save()  # before it starts: `down` must find the server even if the start fails half way
        as_pg = ("runuser", "-u", "postgres", "--")
        run(*as_pg, pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.plan.subnet}.0/24 trust\n")
        run(*as_pg, pg_bin("pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "start",
             "-o", f"-p {self.plan.pg_port} -k {root} -c listen_addresses={self.plan.gateway_ip} -c fsync=off "
                   "-c max_connections=400")
        run(*as_pg, pg_bin("createdb"), "-h", self.plan.gateway_ip, "-p", str(self.plan.pg_port), "-U", "postgres",
             "pnp")

    def stop_postgres(self) -> None:
        if self.plan.pg_dir and Path(self.plan.pg_dir).exists():
            run("runuser", "-u", "postgres", "--", pg_bin("pg_ctl"), "-D", self.plan.pg_dir, "-m", "immediate",
                 "stop", check=False)
        if self.plan.pg_dir:
            shutil.rmtree(Path(self.plan.pg_dir).parent, ignore_errors=True)
        self.plan.pg_dir = ""

    def migrate(self) -> None:
        env = self.node_env(self.plan.nodes[0])
        done = subprocess.run([self._pnpp(), "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise LabError(f"pnpp db upgrade failed: {done.stderr.strip()}")

    # ---- nodes --------------------------------------------------------------------------------------------------
    @staticmethod
    def _pnpp() -> str:
        return str(Path(sys.executable).with_name("pnpp"))

    def node_env(self, node: LabNode, **extra: str) -> dict[str, str]:
        """The environment of a node's ``pnpp run`` (and of any pnpp command run for that node)."""
        p = self.plan
        peer = next(n for n in p.nodes if n is not node)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PNP_")}
        env.update(
            PNP_DATA_DIR=node.data_dir, PNP_NODE_NAME=node.name, PNP_NODE_ADDRESS=node.address, PNP_VIP=p.vip,
            PNP_HA_MODE="vip", PNP_DATABASE_URL=p.database_url, PNP_WORKERS=str(p.workers), PNP_DRAIN_TIMEOUT="3",
            PNP_PRIME_ROLE=node.role,
            # One gateway login for the pair, known to both Prime nodes (Prime HA replicates its accounts).
            PNP_BROKER_CREDENTIALS_FILE=str(self.gateway_credentials_file()),
            # One set of profile keys for the pair: the shared database holds what they seal.
            PNP_PROFILE_KEYS_FILE=str(Path(p.root) / "secrets" / "profile-keys.json"),
            # Every simulated device comes from the devices namespace's one address: a whole fleet is new at once.
            PNP_NEW_DEVICES_PER_SOURCE_PER_MINUTE="0",
        )
        if p.mover == "prime":
            env.update(PNP_PRIME_PEER=peer.address, PNP_PRIME_VIP_INTERFACE="eth0", PNP_PRIME_VIP_PREFIX="24")
        env.update(p.node_settings)
        env.update(extra)
        return env

    def start_node(self, name: str, **extra_env: str) -> None:
        """Start ``pnpp run`` (simulated Prime + gateway) in the node's namespace; keepalived too when it moves the VIP.

        Returns at once; :meth:`wait_ready` waits for it.
        """
        node = self.plan.node(name)
        Path(node.data_dir).mkdir(parents=True, exist_ok=True)
        path = self.gateway_credentials_file()
        if not path.exists():
            write_secret(path, json.dumps({"login": "pnp-gateway", "passcode": secrets.token_urlsafe(24)}))
        if self.plan.mover == "keepalived":
            self.start_keepalived(name)
        log = (Path(node.data_dir) / "node.log").open("ab")
        process = subprocess.Popen(["ip", "netns", "exec", node.namespace, self._pnpp(), "run"],
                                   env=self.node_env(node, **extra_env), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        node.pid = process.pid
        self.save()

    def gateway_credentials_file(self) -> Path:
        return Path(self.plan.root) / "secrets" / "broker-credentials.json"

    def keepalived_conf(self, node: LabNode) -> str:
        """The keepalived configuration of ``node``: the VIP between the two nodes, failback manual (nopreempt)."""
        # High priorities: a backup declares the master dead after 3 adverts plus (256 - priority)/256 s of skew, so
        # 245 takes over 0.57 s sooner than 100 would.
        priority = 250 if node.role == "primary" else 245
        return (
            "global_defs {\n  router_id " + node.name + "\n  enable_script_security\n}\n"
            "vrrp_instance PNP {\n  state BACKUP\n  interface eth0\n  virtual_router_id 77\n"
            f"  priority {priority}\n  advert_int 1\n  nopreempt\n"
            f"  virtual_ipaddress {{\n    {self.plan.vip}/24 dev eth0\n  }}\n}}\n"
        )

    def start_keepalived(self, name: str) -> None:
        node = self.plan.node(name)
        run_dir = Path(node.data_dir) / "keepalived"
        run_dir.mkdir(parents=True, exist_ok=True)
        conf = run_dir / "keepalived.conf"
        conf.write_text(self.keepalived_conf(node))
        log = (run_dir / "keepalived.log").open("ab")
        process = subprocess.Popen(
            ["ip", "netns", "exec", node.namespace, "keepalived", "--dont-fork", "--log-console", "--vrrp",
             "--use-file", str(conf), "--pid", str(run_dir / "k.pid"), "--vrrp_pid", str(run_dir / "v.pid")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        node.keepalived_pid = process.pid
        self.save()

    def stop_keepalived(self, name: str, crash: bool = False) -> None:
        """SIGTERM (keepalived removes the VIP, the peer takes it) or SIGKILL (``crash``: the VIP stays here)."""
        node = self.plan.node(name)
        if node.keepalived_pid:
            try:
                os.killpg(node.keepalived_pid, signal.SIGKILL if crash else signal.SIGTERM)
            except ProcessLookupError:
                pass
            # Gone before returning: a keepalived started again meanwhile would find the old one running (its pid
            # file) and exit at once ("daemon is already running").
            wait_group_gone(node.keepalived_pid, timeout=15.0)
            node.keepalived_pid = 0
            self.save()

    def kill_node(self, name: str, unplug: bool = True) -> None:
        """A hard crash: SIGKILL every process in the node's namespace; ``unplug`` also takes its link down."""
        node = self.plan.node(name)
        # Unplugged while frozen, before the kill: a machine that loses power sends nothing, but the kernel of a
        # killed process closes its sockets and a FIN or RST would tell every device at once (on a live cable).
        self._kill_namespace(node.namespace, while_frozen=(lambda: self.set_link(name, False)) if unplug else None)
        node.pid = node.keepalived_pid = 0
        self.save()

    def stop_node(self, name: str, timeout: float = 30.0) -> None:
        """SIGTERM the node's ``pnpp run`` (gateway drains, Prime stops) and wait for it."""
        node = self.plan.node(name)
        if node.pid:
            try:
                os.killpg(node.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and alive(node.pid):
                time.sleep(0.1)
        self._kill_namespace(node.namespace, only_pids_of=("pnpp", "gunicorn", "python"))
        node.pid = 0
        self.save()

    def _kill_namespace(self, namespace: str, only_pids_of: tuple[str, ...] = (),
                        while_frozen: Callable[[], None] | None = None) -> None:
        """SIGKILL the namespace's processes (those whose command line has a word of ``only_pids_of``, if given).

        All are stopped first (then ``while_frozen`` runs), then killed: killed one by one, the survivors would see
        the others die and react (a keepalived child whose parent died shuts down cleanly, removing the VIP and
        telling its peer at once), which a machine that loses power never does.
        """
        pids = []
        for text in run("ip", "netns", "pids", namespace, check=False).stdout.split():
            pid = int(text)
            if only_pids_of:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if not any(word in cmdline for word in only_pids_of):
                    continue
            pids.append(pid)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if sig == signal.SIGSTOP and while_frozen is not None:
                while_frozen()

    def devices_env(self) -> dict[str, str]:
        """The environment of pnpp commands run in the devices namespace: the VIP, and the shared database."""
        p = self.plan
        env = {k: v for k, v in os.environ.items() if not k.startswith("PNP_")}
        env.update(PNP_VIP=p.vip, PNP_DATABASE_URL=p.database_url, PNP_DATA_DIR=str(Path(p.root) / "devices"),
                   PNP_NODE_NAME="devices")
        return env

    def simulate(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run ``pnpp simulate ARGS`` in the devices namespace against the VIP (it may also use the database)."""
        return subprocess.run(["ip", "netns", "exec", self.plan.devices_namespace, self._pnpp(), "simulate", *args],
                              env=self.devices_env(), capture_output=True, text=True, timeout=timeout)

    def start_fleet(self, results: Path, *args: str) -> subprocess.Popen[str]:
        """Start ``pnpp lab fleet ARGS`` in the devices namespace (see :mod:`.fleet`); returns at once.

        One JSON line per device goes to ``results``; the summary to ``<results>.log``.
        """
        log = results.with_suffix(".log").open("w")
        try:
            return subprocess.Popen(["ip", "netns", "exec", self.plan.devices_namespace, self._pnpp(), "lab", "fleet",
                                     "--results", str(results), *args], env=self.devices_env(), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                    start_new_session=True)
        finally:
            log.close()

    # ---- observing ----------------------------------------------------------------------------------------------
    def status(self, name: str, timeout: float = 3.0) -> dict[str, Any] | None:
        """GET /status on the node's monitoring port (its own address, HTTPS pinned to its CA); ``None`` if down."""
        node = self.plan.node(name)
        ca = Path(node.data_dir) / "certs" / "ca.pem"
        if not ca.exists():
            return None
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = False
        try:
            with urllib.request.urlopen(f"https://{node.address}:11010/status", timeout=timeout,
                                        context=ctx) as resp:
                data = json.load(resp)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def state(self, name: str, timeout: float = 3.0) -> str:
        """ACTIVE, PASSIVE, or DOWN when the node does not answer within ``timeout``."""
        status = self.status(name, timeout)
        return str(status.get("state")) if status else "DOWN"

    def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> None:
        node = self.plan.node(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.pid and not alive(node.pid):
                raise LabError(f"{name}: pnpp run exited:\n{self.log_tail(name)}")
            if self.status(name) is not None:
                return
            time.sleep(0.3)
        raise LabError(f"{name} did not answer /status within {timeout:g}s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = Path(self.plan.node(name).data_dir) / "node.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def describe(self) -> str:
        p = self.plan
        out = [f"HA lab in {p.root} ({p.mover} moves the VIP {p.vip}; PostgreSQL {p.gateway_ip}:{p.pg_port})"]
        holders = self.vip_holders()
        for node in p.nodes:
            out.append(f"  {node.name:8} {node.role:9} netns {node.namespace:10} {node.address:12} "
                       f"gateway {self.state(node.name):8} VIP {'yes' if node.name in holders else 'no'}")
        out.append(f"  devices  netns {p.devices_namespace} {p.devices_ip}: "
                   f"ip netns exec {p.devices_namespace} pnpp simulate cns ...")
        return "\n".join(out)
