"""What the kernel tests share: whether they run on the GPU or the interpreter (the `kernel_device` fixture in
conftest.py), and a rerun of a test file under Triton's interpreter.

The interpreter is chosen when Triton's kernels are defined (TRITON_INTERPRET=1 at import), so on a CPU-only machine
each file's `test_kernels_through_the_interpreter` runs the file again in a child process with it set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available() and not INTERPRETING


def rerun_under_interpreter(test_file: str, select: str = "not interpreter") -> None:
    """Run the tests of `test_file` that `select` (pytest -k) picks in a child process with TRITON_INTERPRET=1, and
    assert that they pass."""
    if ON_GPU or INTERPRETING:
        pytest.skip("the kernels run directly in this process (GPU or interpreter)")
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton is not installed: pip install triton (the interpreter runs the kernel on a CPU)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file), "-k", select],
        env=env, cwd=root, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def compile_for_hopper(kernel, signature: dict[str, str], constexprs: dict[str, object], **options: object) -> None:
    """Compile `kernel` (a @triton.jit function) to an sm_90 binary here, GPU or not: the interpreter runs a kernel's
    Python and accepts what the compiler refuses (seen: a global annotated as constexpr instead of made one).
    `signature`: Triton's type of each runtime argument ("*fp16", "i32", "fp32"); `constexprs`: the rest's values."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    types = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    if sorted(types) != sorted(names):
        raise ValueError(f"give every argument of {kernel.__name__}: {names}")
    source = ASTSource(
        kernel, {n: types[n] for n in names}, constexprs={(names.index(n),): v for n, v in constexprs.items()}
    )
    triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
