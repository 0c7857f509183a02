"""Device simulators (CNS agent, Open PnP agent) for tests, benchmarks and demos."""

import math


def retry_after_seconds(value: str | None) -> float:
    """The seconds of a Retry-After (CNS-W1 header or HTTP header, whole seconds); 0 when absent or not a number."""
    return float(value) if value and value.isdigit() else 0.0


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` by nearest rank (the ceil(fraction * n)-th smallest); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(fraction * len(ordered))) - 1)]
