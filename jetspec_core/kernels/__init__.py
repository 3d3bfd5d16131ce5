"""Triton verification kernels, each beside its launcher and a plain-PyTorch reference.

Import these modules only when a kernel is needed (they import triton); `jetspec_core.backend`
decides between the Triton launchers and the references, so the rest of the code never does.
"""
