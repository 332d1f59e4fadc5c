"""Asking the upstream: the client, what a status means, the poll loop, pollers, the ledger seam."""
