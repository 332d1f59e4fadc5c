"""Studies: single questions measured with the harness (`bench/run <study>`)."""
