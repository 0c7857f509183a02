"""Device simulators (CNS agent, Open PnP agent) for tests, benchmarks and demos."""
