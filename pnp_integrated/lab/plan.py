"""What identifies an HA lab: its nodes, addresses and database, saved as ``lab.json`` (no processes here)."""

from __future__ import annotations

from dataclasses import dataclass, field

MOVERS = ("prime", "keepalived")
STATE_FILE = "lab.json"
PG_PORT = 25432  # the first choice; another is taken when something else listens there
READY_TIMEOUT = 90.0


class LabError(RuntimeError):
    """The lab could not be built or driven; the message says what failed."""


@dataclass
class LabNode:
    """One Prime node of the lab."""

    name: str  # node name (prime-a, prime-b)
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
