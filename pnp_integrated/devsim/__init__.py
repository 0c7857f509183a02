"""Device simulators (CNS agent, Open PnP agent) for tests, benchmarks and demos."""


def retry_after_seconds(value: str | None) -> float:
    """The seconds of a Retry-After (CNS-W1 header or HTTP header, whole seconds); 0 when absent or not a number."""
    return float(value) if value and value.isdigit() else 0.0
