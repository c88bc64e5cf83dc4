"""Benchmarks: the figures docs/benchmarks.md quotes. Each script measures against the real stack
(`bash scripts/stack.sh start`) and runs from the repository root as a module:

    python -m bench.rollback_speed --rounds 3

so that the repository root is on the import path (`pipeline`, `teststack`, `bench.common`) with
nothing edited at run time. Tests never run these; what a test and a bench share lives in teststack/.
"""
