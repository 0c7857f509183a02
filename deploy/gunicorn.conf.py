"""gunicorn configuration of a gateway node: ``gunicorn -c deploy/gunicorn.conf.py wsgi:app``.

gunicorn serves plain HTTP; every other port (HTTPS, monitoring, CNS) is opened by the listener controller inside
each gevent worker after gevent has patched it (see pnp_integrated/runtime.py and listeners.py).
"""

import os
import shutil
import sys

# Validating the settings imports the PostgreSQL driver here, in the master, before gevent patches the workers:
# psycopg would then pick its C wait function, which blocks a whole gevent worker on every query. wait_poll calls
# select.poll at each wait, which is gevent's in a worker (see also cooperative_database_waits below).
os.environ.setdefault("PSYCOPG_WAIT_FUNC", "wait_poll")

from pnp_integrated.config import ConfigError, load_settings

try:
    settings = load_settings()
except ConfigError as exc:
    sys.stderr.write(f"pnp-integrated: {exc}\n")
    sys.exit(2)

# Request histograms of all workers are summed through prometheus_client's multiprocess mode, in files kept in
# memory where the host allows (on a full data disk they would kill every worker). Set before anything imports
# prometheus_client: it reads PROMETHEUS_MULTIPROC_DIR once, at its import.
from pnp_integrated.metrics_files import metrics_files_dir, prune_metrics_files

_metrics_dir = metrics_files_dir(settings)
shutil.rmtree(_metrics_dir, ignore_errors=True)
_metrics_dir.mkdir(parents=True, mode=0o700)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)

from pnp_integrated.listeners import ListenerBindError  # noqa: E402 (after PROMETHEUS_MULTIPROC_DIR)
from pnp_integrated.runtime import http_bind_socket, probe_ports_free  # noqa: E402

try:
    probe_ports_free(settings)
    # Bound here (IP_FREEBIND, so a VIP that is not yet local can be bound) and handed to gunicorn by descriptor.
    _http_socket = http_bind_socket(settings)
except ListenerBindError as exc:
    sys.stderr.write(f"pnp-integrated: {exc}\n")
    sys.exit(2)

# What the node creates (database, metrics files, certificates, secrets) is readable by its owner only, also when
# gunicorn is started directly rather than by `pnpp run`.
os.umask(0o077)


bind = [f"fd://{_http_socket.fileno()}"]
worker_class = "pnp_integrated.runtime.GatewayGeventWorker"  # gevent; accepts new connections in batches
workers = settings.workers
worker_connections = 20000
graceful_timeout = int(settings.drain_timeout) + 5
timeout = 60
proc_name = "pnp-integrated"
control_socket_disable = True  # several nodes may share a host (HA lab); the control socket path would collide
accesslog = None
errorlog = "-"
loglevel = "info"


def post_worker_init(worker):
    """Start this worker's raw listeners once gevent has patched the process; bind errors stop the node."""
    from pnp_integrated.database import cooperative_database_waits
    from pnp_integrated.runtime import start_worker

    cooperative_database_waits()
    start_worker(worker.wsgi)


def worker_exit(server, worker):
    from pnp_integrated.runtime import stop_worker

    if getattr(worker, "wsgi", None) is not None:
        stop_worker(worker.wsgi)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    prune_metrics_files(_metrics_dir, set(server.WORKERS) - {worker.pid})


def on_exit(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
