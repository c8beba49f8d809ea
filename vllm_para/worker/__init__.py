"""PARA in vLLM's workers: layer wrappers, side buffer, VG slots, the VG op, per-step planning,
runner hooks and the worker extension.

Runs in: every worker process.
"""
