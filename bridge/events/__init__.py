"""What a run's viewers receive: SSE encoding, a run's history, channels and the hub."""
