"""Running it: metrics, logs, event-loop lag, the garbage collector."""
