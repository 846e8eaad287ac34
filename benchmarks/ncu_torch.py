"""torch SDPA launches to profile: ``ncu ... python benchmarks/ncu_torch.py B D S MASK [DTYPE]``.

The same FA3 grid shape as ``ncu_kernels.py`` (batch * seq = 16384, heads * head_dim = 2048),
torch's (batch, heads, seq, head_dim) layout, inference forward (no grad). B (backend): ``cudnn``
or ``fa2``; MASK: ``causal`` or ``dense``; DTYPE: ``fp16`` (default) or ``bf16``. Three calls,
so ``--launch-skip 2 --launch-count 1`` with a kernel-name filter profiles the third.
"""

from __future__ import annotations

import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "fa2": SDPBackend.FLASH_ATTENTION}


def main(backend: str, d: int, s: int, mask: str, dtype: str = "fp16") -> None:
    b, h = 16384 // s, 2048 // d
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    generator = torch.Generator(device="cuda").manual_seed(0)
    q_BHSD, k_BHSD, v_BHSD = (
        torch.randn(b, h, s, d, device="cuda", dtype=torch_dtype, generator=generator)
        for _ in range(3)
    )
    with torch.no_grad(), sdpa_kernel(BACKENDS[backend]):
        for _ in range(3):
            torch.nn.functional.scaled_dot_product_attention(
                q_BHSD, k_BHSD, v_BHSD, is_causal=mask == "causal"
            )
        torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], *sys.argv[5:])
