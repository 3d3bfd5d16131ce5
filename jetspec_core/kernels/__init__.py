"""Triton verification kernels, each beside its launcher and a plain-PyTorch reference.

Import these modules only when a kernel is needed (they import triton); `jetspec_core.backend`
decides between the Triton launchers and the references, so the rest of the code never does.
"""


def is_interpreted(kernel) -> bool:
    """Whether a @triton.jit kernel was decorated under the Triton interpreter (TRITON_INTERPRET=1 at
    import: CPU tests). Launchers then use exact fp32 dots, and `fused_kl` accepts CPU tensors."""
    return type(kernel).__name__ == "InterpretedFunction"
