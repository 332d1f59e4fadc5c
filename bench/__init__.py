"""The sse-bridge benchmark suite: see bench/README.md (`bench/run`, `bench/run --quick`)."""
