"""Our Triton kernels as torch custom ops; imports nothing of the project outside plugin/."""

from __future__ import annotations

import os

from torch import Tensor


def check_device(x: Tensor, op: str) -> None:
    """The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1)."""
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"{op} runs Triton kernels: CUDA tensors, or TRITON_INTERPRET=1; got {x.device}")
