"""Inference tests that have their own folder: the CPU options of the fast path (compile, bf16, int8)."""
