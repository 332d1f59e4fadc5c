"""Command-line tools beside the serving path: watch, inspect, SSE parser, config reference."""
