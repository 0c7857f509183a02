"""The standalone lab: a gateway HA pair of its own and Prime servers elsewhere, in network namespaces (root only).

Topology (``<p>`` is the lab prefix; addresses in ``<subnet>.0/24``)::

    root namespace: bridge <p>br, <subnet>.1 (PostgreSQL, shared by both gateways)
      |-- namespace <p>-a   eth0 <subnet>.11  gateway gw-a (pnpp run, standalone, pair primary)
      |-- namespace <p>-b   eth0 <subnet>.12  gateway gw-b (pair secondary)
      |-- namespace <p>-p1  eth0 <subnet>.21  Prime server prime-1 (pnpp prime serve)
      |-- namespace <p>-p2  eth0 <subnet>.22  Prime server prime-2 (the standby, with Prime HA)
      '-- namespace <p>-dev eth0 <subnet>.50  simulated devices
    gateway VIP <subnet>.100/24, moved by the gateways' own watch (``builtin``) or by keepalived
    Prime VIP <subnet>.200/24 (Prime HA with a VIP), moved by the simulated Prime pair

Prime without HA is prime-1 alone; with a VIP (``prime_ha="vip"``) the gateways talk to the Prime VIP; with
different addresses to prime-1 and prime-2 by their own addresses. The gateways are set up as an operator would: the
broker account is created on Prime (``pnpp prime account create``; Prime HA replicates it, and the server
certificate, to its secondary), and each gateway trusts every address it reaches Prime at and stores its login
(``pnpp prime trust --from ... --login``). Each gateway applies the schema as its ``pnpp run`` starts (under the
database's migration lock, so the second finds it done).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import Settings
from . import HaLab
from .plan import PG_PORT, PRIME_HA_MODES, STANDALONE_MOVERS, LabError, LabNode, LabPlan
from .procs import alive, free_port, run

GATEWAY_LOGIN = "pnp-gateway"
PORTS = Settings()  # the lab's gateways and Prime servers keep the default ports
PRIME_START_TIMEOUT = 30.0
READY_TIMEOUT = 180.0  # a gateway of the pair starts its watch and gunicorn: minutes on a busy host


class StandaloneLab(HaLab):
    """Builds, drives and removes the standalone lab; the gateways are its ``nodes``, the Prime servers ``primes``."""

    @classmethod
    def create(cls, root: Path, *, prefix: str = "pnplab", subnet: str = "10.77.0", mover: str = "builtin",
               workers: int = 2, node_settings: dict[str, str] | None = None, prime_ha: str = "none") \
            -> StandaloneLab:
        if mover not in STANDALONE_MOVERS:
            raise LabError(f"mover {mover!r} must be one of {', '.join(STANDALONE_MOVERS)}")
        if prime_ha not in PRIME_HA_MODES:
            raise LabError(f"Prime HA {prime_ha!r} must be one of {', '.join(PRIME_HA_MODES)}")
        if len(prefix) > 8 or not prefix.isalnum():
            raise LabError(f"prefix {prefix!r}: use up to 8 letters and digits (interface names are short)")
        root = root.resolve()
        plan = LabPlan(str(root), prefix, subnet, mover, workers, node_settings=dict(node_settings or {}),
                       pg_port=free_port(PG_PORT), topology="standalone", prime_ha=prime_ha)
        for letter, role, host in (("a", "primary", 11), ("b", "secondary", 12)):
            plan.nodes.append(LabNode(f"gw-{letter}", f"{prefix}-{letter}", f"{subnet}.{host}", role,
                                      str(root / f"gw-{letter}")))
        for index, role in enumerate(("primary", "secondary")[:1 if prime_ha == "none" else 2], start=1):
            plan.primes.append(LabNode(f"prime-{index}", f"{prefix}-p{index}", f"{subnet}.{20 + index}", role,
                                       str(root / f"prime-{index}")))
        return cls(plan)

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def up(self) -> None:
        """Network, PostgreSQL, the Prime servers, the gateways' trust and login, schema, then both gateways."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, addresses, PostgreSQL as its own user)")
        if self.plan.mover == "keepalived" and shutil.which("keepalived") is None:
            raise LabError("keepalived is not installed: apt-get install -y keepalived (or use --mover builtin)")
        self.save()
        try:
            self.build_network()
            self.start_postgres()
            passcode = self.prepare_primes()
            for prime in self.plan.primes:
                self.start_prime(prime.name)
            for prime in self.plan.primes:
                self.wait_prime(prime.name)
            with ThreadPoolExecutor(len(self.plan.nodes)) as pool:  # one operator per gateway host, at once
                list(pool.map(lambda node: self.trust_prime(node.name, passcode), self.plan.nodes))
            for node in self.plan.nodes:
                self.start_node(node.name)
            for node in self.plan.nodes:
                self.wait_ready(node.name)
        except BaseException:
            self.down()
            raise

    # ---- Prime servers ------------------------------------------------------------------------------------------
    @property
    def prime_addresses(self) -> list[str]:
        """Where the gateways reach Prime: its one server, its VIP, or its primary and secondary."""
        p = self.plan
        if p.prime_ha == "vip":
            return [p.prime_vip]
        return [prime.address for prime in p.primes]

    def prime_env(self, prime: LabNode) -> dict[str, str]:
        """The environment of a Prime server's ``pnpp prime`` commands."""
        p = self.plan
        env = {k: v for k, v in os.environ.items() if not k.startswith("PNP_")}
        env.update(PNP_DATA_DIR=prime.data_dir, PNP_NODE_NAME=prime.name, PNP_NODE_ADDRESS=prime.address,
                   PNP_VIP=p.prime_vip if p.prime_ha == "vip" else prime.address, PNP_HA_MODE=p.prime_ha)
        return env

    def prime_data_dirs(self) -> list[Path]:
        return [Path(prime.data_dir) for prime in self.plan.primes]

    def prepare_primes(self) -> str:
        """The gateways' broker account, made on Prime's primary, and its passcode.

        Prime HA replicates the account and the server certificate to the secondary: the lab copies them, so a
        gateway that trusts Prime's VIP still trusts it after the VIP moved.
        """
        from ..config import load_settings
        from ..tls import ensure_certificates

        first, *others = self.plan.primes
        for prime in self.plan.primes:
            Path(prime.data_dir).mkdir(parents=True, exist_ok=True)
        ensure_certificates(load_settings(environ=self.prime_env(first), gateway=False))
        done = subprocess.run([self._pnpp(), "prime", "account", "create", GATEWAY_LOGIN, "--role", "gateway"],
                              env=self.prime_env(first), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise LabError(f"pnpp prime account create failed: {done.stderr.strip()}")
        for prime in others:
            shutil.copytree(Path(first.data_dir) / "certs", Path(prime.data_dir) / "certs", dirs_exist_ok=True)
            target = Path(prime.data_dir) / "prime"
            target.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copy2(Path(first.data_dir) / "prime" / "broker-accounts.json", target)
        return done.stdout.strip()

    def start_prime(self, name: str) -> None:
        """``pnpp prime serve`` in the server's namespace (a pair with Prime HA: the VIP moves with ``vip``)."""
        prime = self.plan.prime(name)
        args = [self._pnpp(), "prime", "serve", "--role", prime.role]
        if len(self.plan.primes) > 1:
            peer = next(other for other in self.plan.primes if other is not prime)
            args += ["--peer", peer.address]
            if self.plan.prime_ha == "vip":
                args += ["--vip-interface", "eth0", "--vip-prefix", "24"]
        log = (Path(prime.data_dir) / "prime.log").open("ab")
        process = subprocess.Popen(["ip", "netns", "exec", prime.namespace, *args], env=self.prime_env(prime),
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        log.close()
        prime.pid = process.pid
        self.save()

    def wait_prime(self, name: str, timeout: float = PRIME_START_TIMEOUT) -> None:
        """Until the server's broker and health monitor accept connections on its address."""
        from ..prime.server import wait_for_ports

        prime = self.plan.prime(name)
        try:
            wait_for_ports([(prime.address, PORTS.broker_port), (prime.address, PORTS.health_port)], timeout,
                           alive=lambda: alive(prime.pid))
        except (TimeoutError, RuntimeError) as exc:
            raise LabError(f"{name} did not start: {exc}\n{self._tail(Path(prime.data_dir) / 'prime.log')}") from None

    def kill_prime(self, name: str) -> None:
        """A Prime server's machine dies: every process of it is killed and its cable is gone."""
        prime = self.plan.prime(name)
        self._kill_namespace(prime.namespace, while_frozen=lambda: run(
            "ip", "link", "set", self._outer(prime.namespace), "down"))
        prime.pid = 0
        self.save()

    def trust_prime(self, name: str, passcode: str) -> None:
        """On gateway ``name``: trust every address it reaches Prime at and store its broker login."""
        node = self.plan.node(name)
        for index, host in enumerate(self.prime_addresses):
            login = ["--login", GATEWAY_LOGIN, "--passcode-file", "-"] if index == 0 else []
            cmd = [self._pnpp(), "prime", "trust", "--from", f"{host}:{PORTS.broker_port}", *login]
            done = subprocess.run(["ip", "netns", "exec", node.namespace, *cmd], env=self.node_env(node),
                                  input=passcode + "\n", capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise LabError(f"{name}: pnpp prime trust --from {host} failed: {done.stderr.strip()}")

    # ---- gateways -----------------------------------------------------------------------------------------------
    def node_env(self, node: LabNode, **extra: str) -> dict[str, str]:
        """The environment of a gateway's ``pnpp run`` (and of any pnpp command run for that gateway)."""
        p = self.plan
        peer = next(n for n in p.nodes if n is not node)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PNP_")}
        addresses = self.prime_addresses
        env.update(
            PNP_MODE="standalone", PNP_DATA_DIR=node.data_dir, PNP_NODE_NAME=node.name, PNP_NODE_ADDRESS=node.address,
            PNP_VIP=p.vip, PNP_DATABASE_URL=p.database_url, PNP_WORKERS=str(p.workers), PNP_DRAIN_TIMEOUT="3",
            PNP_HA_MODE=p.prime_ha, PNP_PRIME_ADDRESS=addresses[0],
            PNP_GATEWAY_HA="pair", PNP_GATEWAY_PEER=peer.address, PNP_GATEWAY_ROLE=node.role,
            PNP_GATEWAY_VIP_MOVER=p.mover, PNP_GATEWAY_VIP_INTERFACE="eth0", PNP_GATEWAY_VIP_PREFIX="24",
            # One set of profile keys for the pair: the shared database holds what they seal.
            PNP_PROFILE_KEYS_FILE=str(Path(p.root) / "secrets" / "profile-keys.json"),
            # Every simulated device comes from the devices namespace's one address: a whole fleet is new at once.
            PNP_NEW_DEVICES_PER_SOURCE_PER_MINUTE="0",
        )
        if len(addresses) > 1:
            env.update(PNP_PRIME_SECONDARY_ADDRESS=addresses[1])
        env.update(p.node_settings)
        env.update(extra)
        return env

    def start_node(self, name: str, **extra_env: str) -> None:
        """Start the gateway's ``pnpp run`` in its namespace (and keepalived when it moves the VIP); returns at once."""
        node = self.plan.node(name)
        Path(node.data_dir).mkdir(parents=True, exist_ok=True)
        if self.plan.mover == "keepalived":
            self.start_keepalived(name)
        log = (Path(node.data_dir) / "node.log").open("ab")
        process = subprocess.Popen(["ip", "netns", "exec", node.namespace, self._pnpp(), "run"],
                                   env=self.node_env(node, **extra_env), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        node.pid = process.pid
        self.save()

    def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> None:
        super().wait_ready(name, timeout)

    def keepalived_conf(self, node: LabNode) -> str:
        """deploy/keepalived/keepalived.standalone.conf.sample for the lab: keepalived tracks the gateway's health as
        the pair's health monitor reports it, so a gateway that stops serving, or cannot reach the database, gives
        the VIP up."""
        priority = 250 if node.role == "primary" else 245
        return (
            "global_defs {\n  router_id " + node.name + "\n  enable_script_security\n  script_user root\n}\n"
            "vrrp_script pnp_gateway {\n  script \"/usr/bin/curl -fsk --max-time 2 -o /dev/null "
            f"https://{node.address}:{PORTS.health_port}/health\"\n  interval 1\n  timeout 3\n  fall 3\n"
            "  rise 2\n}\n"
            "vrrp_instance PNP_GATEWAY {\n  state BACKUP\n  interface eth0\n  virtual_router_id 78\n"
            f"  priority {priority}\n  advert_int 1\n  nopreempt\n"
            f"  virtual_ipaddress {{\n    {self.plan.vip}/24 dev eth0\n  }}\n"
            "  track_script {\n    pnp_gateway\n  }\n}\n"
        )

    def ha_failback(self, name: str) -> subprocess.CompletedProcess[str]:
        """``pnpp ha failback`` run on gateway ``name``."""
        node = self.plan.node(name)
        return subprocess.run(["ip", "netns", "exec", node.namespace, self._pnpp(), "ha", "failback"],
                              env=self.node_env(node), capture_output=True, text=True, timeout=60)

    def row(self, name: str, service: str) -> dict[str, str] | None:
        """The row of ``service`` in the gateway's status table (``None`` when it does not answer)."""
        status = self.status(name, timeout=10.0)
        if status is None:
            return None
        return next((r for r in status["rows"] if r["service"] == service), None)

    # ---- observing ----------------------------------------------------------------------------------------------
    @staticmethod
    def _tail(path: Path, lines: int = 30) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def describe(self) -> str:
        p = self.plan
        out = [f"standalone lab in {p.root} ({p.mover} moves the gateway VIP {p.vip}; Prime HA {p.prime_ha}"
               + (f", Prime VIP {p.prime_vip}" if p.prime_ha == "vip" else "")
               + f"; PostgreSQL {p.gateway_ip}:{p.pg_port})"]
        holders = self.vip_holders()
        for node in p.nodes:
            out.append(f"  {node.name:8} {node.role:9} netns {node.namespace:10} {node.address:12} "
                       f"gateway {self.state(node.name):8} VIP {'yes' if node.name in holders else 'no'}")
        for prime in p.primes:
            out.append(f"  {prime.name:8} {prime.role:9} netns {prime.namespace:10} {prime.address:12} Prime server")
        out.append(f"  devices  netns {p.devices_namespace} {p.devices_ip}: "
                   f"ip netns exec {p.devices_namespace} pnpp simulate cns ...")
        return "\n".join(out)
