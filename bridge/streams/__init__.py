"""One viewer's stream: opening, single and multi-run streams, catch-up, limits, fast path."""
