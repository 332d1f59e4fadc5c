"""The zero-configuration demo: a simulated legacy API with the bridge in front of it."""
