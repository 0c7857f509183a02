"""The gateway's side of the Prime broker: leader lease, leader loop, the bridge, command application, retention.

Only the leader (holder of the ``leader`` lease) runs the bridge; every gunicorn worker competes for the lease
(:class:`~.leader.LeaderLoop`, started from the worker hooks). The outbox the bridge drains is :mod:`..outbox`.
"""
