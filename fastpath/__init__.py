"""vxtap fast path: Cython batch loops, headers, tables and ARP responder.

Each compiled module has a pure-Python reference beside it (`*_ref.py`) with the same API;
the unit tests run against both. This package imports nothing else of the project.
"""
