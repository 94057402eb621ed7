"""vxtap benchmarks (not tests): micro benchmarks of the fast path and the system benchmark.

    python -m pytest benchmarks/bench_micro.py     # pytest-benchmark, ns per packet
    python -m benchmarks.system [--quick]          # kernel VXLAN vs vxtap in namespaces (root)

See benchmarks/README.md.
"""
