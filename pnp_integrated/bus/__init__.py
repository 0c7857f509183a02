"""The gateway's side of the Prime broker: outbox, leader lease, the bridge and command application.

Only the leader (holder of the ``leader`` lease) runs the bridge; every gunicorn worker competes for the lease
(:class:`~.leader.LeaderLoop`, started from the worker hooks).
"""

from .leader import start_leader_loop, stop_leader_loop
from .outbox import record_event

__all__ = ["record_event", "start_leader_loop", "stop_leader_loop"]
