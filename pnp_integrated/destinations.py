"""The broker destinations of the gateway <-> Prime contract (ActiveMQ naming), one definition for both sides."""

EVENTS_QUEUE = "/queue/pnp.gateway.events"  # gateway -> Prime
COMMANDS_QUEUE = "/queue/pnp.gateway.commands"  # Prime -> gateway
DLQ = "/queue/ActiveMQ.DLQ"  # where a broker puts what could not be delivered
