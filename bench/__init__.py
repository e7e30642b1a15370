"""pop53 benchmarks (not part of the test suite; see docs/bench.md)."""
