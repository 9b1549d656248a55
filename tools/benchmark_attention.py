"""Attention kernels alone on a GPU: forward and forward+backward ms of torch SDPA (flash, cuDNN)
for causal attention and of compiled FlexAttention for causal and prefix-LM masks, the latter
under several `kernel_options` (block sizes, warps, stages, TMA).

    python tools/benchmark_attention.py                  # B8 H16 T2048 D128 bf16 (the 1.3B layer)

Prints one line per kernel: (forward ms, forward+backward ms[, max |diff| against the default
FlexAttention output, compile seconds]), then a RESULT line with all of them as JSON. Prefix
lengths are drawn uniformly per sample, as --prefix-lm does.
"""
import argparse
import json
import sys
import time

import torch
import torch._dynamo


def timeit(fn, n=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


FLEX_OPTIONS = {
    "default": {},
    "rows_safe": {"ROWS_GUARANTEED_SAFE": True},
    "tma": {"USE_TMA": True},
    "fwd128x64w8s3": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64, "fwd_num_warps": 8,
                      "fwd_num_stages": 3},
    "fwd128x128w8s2": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_warps": 8,
                       "fwd_num_stages": 2},
    "bwd64_128w8s3": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128,
                      "bwd_BLOCK_N2": 64, "bwd_num_warps": 8, "bwd_num_stages": 3},
    "bwd32_128w4s3": {"bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128,
                      "bwd_BLOCK_N2": 32, "bwd_num_warps": 4, "bwd_num_stages": 3},
    "bwd64_64w4s3": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64,
                     "bwd_BLOCK_N2": 64, "bwd_num_warps": 4, "bwd_num_stages": 3},
    "bwd64_128w4s2": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128,
                      "bwd_BLOCK_N2": 64, "bwd_num_warps": 4, "bwd_num_stages": 2},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in (("batch", 8), ("heads", 16), ("seq", 2048), ("head-dim", 128)):
        p.add_argument(f"--{name}", type=int, default=default)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmark_attention.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    torch._dynamo.config.cache_size_limit = 64  # one compiled kernel per options setting
    B, H, T, D = args.batch, args.heads, args.seq, args.head_dim
    dev = "cuda"
    prefix = torch.randint(0, T, (B,), generator=torch.Generator().manual_seed(0)).to(dev)
    masks = {"causal": create_block_mask(lambda b, h, q, k: k <= q, None, None, T, T,
                                         device=dev),
             "prefix": create_block_mask(lambda b, h, q, k: (k <= q) | (k < prefix[b]), B, None,
                                         T, T, device=dev)}
    q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad_out = torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16)

    def fwd_bwd(f):
        return lambda: torch.autograd.grad(f(), (q, k, v), grad_out)

    res = {}
    for name, backend in (("sdpa_flash_causal", SDPBackend.FLASH_ATTENTION),
                          ("sdpa_cudnn_causal", SDPBackend.CUDNN_ATTENTION)):
        def sdpa(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        res[name] = (timeit(sdpa), timeit(fwd_bwd(sdpa)))
        print(name, res[name], flush=True)
    ref = None
    for mask_name, block_mask in masks.items():
        for opt_name, opts in FLEX_OPTIONS.items():
            if mask_name == "causal" and opt_name not in ("default", "rows_safe", "tma"):
                continue
            key = f"flex_{mask_name}_{opt_name}"
            t0 = time.time()
            try:
                compiled = torch.compile(
                    lambda q, k, v, bm=block_mask, o=opts: flex_attention(
                        q, k, v, block_mask=bm, kernel_options=o), dynamic=False)
                run = lambda: compiled(q, k, v)  # noqa: E731
                out = run().detach().float()
                if mask_name == "prefix" and opt_name == "default":
                    ref = out
                err = (out - ref).abs().max().item() if mask_name == "prefix" else 0.0
                res[key] = (timeit(run), timeit(fwd_bwd(run)), err, round(time.time() - t0, 1))
            except Exception as e:  # an options setting this GPU cannot run
                res[key] = f"failed: {type(e).__name__}: {str(e)[:200]}"
            print(key, res[key], flush=True)
    print("RESULT", json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
