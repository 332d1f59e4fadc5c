"""Serving with Hypercorn.

serve.py uses only its public seams; its internals are touched only in the two
hypercorn_* modules, each a labelled hack (docs/hacks.md).
"""
