"""What identifies an HA lab: its nodes, addresses and database, saved as ``lab.json`` (no processes here).

Two topologies: ``integrated`` (two Prime nodes, each with its gateway) and ``standalone`` (a gateway pair of its
own, and one or two Prime servers in namespaces of their own, see :mod:`.standalone`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MOVERS = ("prime", "keepalived")  # integrated: what moves Prime's VIP
STANDALONE_MOVERS = ("builtin", "keepalived")  # standalone: what moves the gateway pair's VIP
TOPOLOGIES = ("integrated", "standalone")
PRIME_HA_MODES = ("none", "vip", "different-ip")  # a standalone lab's Prime: one server, or a pair
STATE_FILE = "lab.json"
PG_PORT = 25432  # the first choice; another is taken when something else listens there
READY_TIMEOUT = 90.0


class LabError(RuntimeError):
    """The lab could not be built or driven; the message says what failed."""


@dataclass
class LabNode:
    """One node of the lab: a Prime node with its gateway (integrated), a gateway or a Prime server (standalone)."""

    name: str  # node name (prime-a, prime-b; standalone gw-a, gw-b, prime-1, prime-2)
    namespace: str
    address: str
    role: str  # primary / secondary
    data_dir: str
    pid: int = 0  # pnpp run
    keepalived_pid: int = 0


@dataclass
class LabPlan:
    """Everything that identifies a lab; saved as ``lab.json``."""

    root: str
    prefix: str = "pnplab"
    subnet: str = "10.77.0"
    mover: str = "prime"
    workers: int = 2
    nodes: list[LabNode] = field(default_factory=list)
    pg_dir: str = ""
    node_settings: dict[str, str] = field(default_factory=dict)  # extra PNP_* settings of both nodes
    pg_port: int = PG_PORT
    topology: str = "integrated"
    prime_ha: str = "none"  # standalone: Prime's HA (none: one server; vip, different-ip: a pair)
    primes: list[LabNode] = field(default_factory=list)  # standalone: the Prime servers

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def gateway_ip(self) -> str:
        return f"{self.subnet}.1"

    @property
    def vip(self) -> str:
        return f"{self.subnet}.100"

    @property
    def prime_vip(self) -> str:
        """Standalone, Prime HA with a VIP: the address the Prime pair moves between its two servers."""
        return f"{self.subnet}.200"

    @property
    def members(self) -> list[tuple[str, str]]:
        """(namespace, address) of everything on the lab's bridge."""
        return [(n.namespace, n.address) for n in (*self.nodes, *self.primes)] + [(self.devices_namespace,
                                                                                  self.devices_ip)]

    @property
    def devices_namespace(self) -> str:
        return f"{self.prefix}-dev"

    @property
    def devices_ip(self) -> str:
        return f"{self.subnet}.50"

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.gateway_ip}:{self.pg_port}/pnp"

    def node(self, name: str) -> LabNode:
        for node in self.nodes:
            if node.name == name or node.namespace.endswith(f"-{name}"):
                return node
        raise LabError(f"no lab node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def prime(self, name: str) -> LabNode:
        for node in self.primes:
            if node.name == name:
                return node
        raise LabError(f"no Prime server {name!r} in the lab (servers: {', '.join(n.name for n in self.primes)})")
