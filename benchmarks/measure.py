"""What every side-by-side benchmark needs: alternating timed calls with their medians, and
this machine's float32 matmul rate with the FLOPs torch's counter leaves out on CPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def alternate(calls: dict[str, Callable], warmup: int, repeats: int) -> dict[str, list[float]]:
    """`warmup` untimed calls of each, then `repeats` rounds calling each once, in their order."""
    for call in calls.values():
        for _ in range(warmup):
            call(warm=True)
    seconds = {library: [] for library in calls}
    for _ in range(repeats):
        for library, call in calls.items():
            start = time.perf_counter()
            call(warm=False)
            seconds[library].append(round(time.perf_counter() - start, 5))
    return seconds


def summarize(seconds: dict[str, list[float]]) -> dict:
    medians = {library: statistics.median(s) for library, s in seconds.items()}
    return {**{library: {"seconds": s, "median": round(medians[library], 5)} for library, s in seconds.items()},
            "ratio diffusers/ldmkit": round(medians["diffusers"] / medians["ldmkit"], 3)}


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch counts the CUDA attention kernels only; on CPU scaled_dot_product_attention runs these.
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
                       torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}


def matmul_peak(n: int, repeats: int) -> dict:
    """This machine's float32 matmul rate at the current thread count: n x n torch.mm, 2 n^3 FLOPs."""
    g = torch.Generator().manual_seed(0)
    a, b, out = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g), torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        seconds.append(round(time.perf_counter() - start, 5))
    median = statistics.median(seconds)
    return {"n": n, "seconds": seconds, "median": median, "gflop/s": round(2 * n**3 / median / 1e9, 2)}
