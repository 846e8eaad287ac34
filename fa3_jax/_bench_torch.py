"""torch SDPA peers of ``fa3_jax.benchmark``, timed in a child process.

torch and JAX each load their own CUDA libraries, so torch runs in a child
Python process that stays up for the whole benchmark run and times one round
of one backend per request, so its backends take their turn in the same
interleaved rounds as the JAX implementations (``benchmark.time_rounds``): the
card's speed drifts by ~10% between measurements (benchmarks/NOTES.md,
"Session 17"), and a torch timed minutes apart from ours, in a subprocess run
before the JAX timings, carried that drift into our ratio against it
(benchmarks/NOTES.md, "Session 18").

Protocol: one JSON object per line. The first line sets the timing
(``iters``, ``repeats``, ``timer``); each request ``{"impl", "problem"}`` gets
``{"ms": milliseconds per call}`` or ``{"error": message}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Callable

#: The child: reads requests on stdin, answers on its original stdout (anything
#: the libraries print goes to stderr).
_WORKER = r"""
import json, sys
answers, sys.stdout = sys.stdout, sys.stderr
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
sdpa = torch.nn.functional.scaled_dot_product_attention
backends = {"torch_cudnn": SDPBackend.CUDNN_ATTENTION, "torch_fa2": SDPBackend.FLASH_ATTENTION}
cfg = json.loads(sys.stdin.readline())
def timed(fn):
    if cfg["timer"] == "cupti":
        return kernel_time(fn)
    fn(); torch.cuda.synchronize()
    runs = []
    for _ in range(cfg["repeats"]):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(cfg["iters"]):
            fn()
        b.record(); torch.cuda.synchronize()
        runs.append(a.elapsed_time(b) / cfg["iters"])
    return sorted(runs)[len(runs) // 2]
def kernel_time(fn):
    # GPU time per call: the kernels of each call summed (torch profiler = CUPTI), median.
    from torch.profiler import ProfilerActivity, profile
    calls = cfg["iters"] * cfg["repeats"]
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = sorted((e.time_range.start, e.time_range.elapsed_us()) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    if not kernels:
        raise RuntimeError("the torch profiler saw no GPU kernels")
    if len(kernels) % calls:  # calls differ in their kernels: the mean per call
        return sum(us for _, us in kernels) / calls * 1e-3
    per = len(kernels) // calls
    sums = sorted(sum(us for _, us in kernels[i:i + per]) for i in range(0, len(kernels), per))
    return sums[len(sums) // 2] * 1e-3
def one_round(impl, p, q, k, v, do):
    with sdpa_kernel(backends[impl]):
        if p["mode"] == "fwd":
            return timed(lambda: sdpa(q, k, v, is_causal=p["causal"]))
        qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
        out = sdpa(qq, kk, vv, is_causal=p["causal"])
        return timed(lambda: torch.autograd.grad(out, (qq, kk, vv), do, retain_graph=True))
inputs = {}  # the current problem's q, k, v, dO (one problem's at a time)
for line in sys.stdin:
    req = json.loads(line)
    p = req["problem"]
    key = (p["dtype"], p["batch"], p["heads"], p["seq"], p["head_dim"])
    try:
        if key not in inputs:
            inputs.clear()
            torch.cuda.empty_cache()
            dt = {"fp16": torch.float16, "bf16": torch.bfloat16}[p["dtype"]]
            shape = (p["batch"], p["heads"], p["seq"], p["head_dim"])  # B, H, S, D
            inputs[key] = [torch.randn(shape, device="cuda", dtype=dt) for _ in range(4)]
        answer = {"ms": one_round(req["impl"], p, *inputs[key])}
    except Exception as e:
        answer = {"error": f"{type(e).__name__}: {e}"[:300]}
    print(json.dumps(answer), file=answers, flush=True)
"""


class Child:
    """A Python child running ``script`` that answers each JSON request line with one JSON
    line; ``setup`` is its first line. A request waits at most ``timeout_s`` seconds, after
    which the child is stopped; a child that exited reports the end of its stderr."""

    def __init__(self, script: str, setup: dict, *, timeout_s: float):
        self._timeout_s = timeout_s
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false"),
        )
        self._send(setup)

    def _failure(self, what: str) -> RuntimeError:
        self._stderr.seek(0)
        return RuntimeError(f"{what}: {self._stderr.read().strip()[-300:]}")

    def _send(self, message: dict) -> None:
        try:
            self._proc.stdin.write(json.dumps(message) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # reported by ``ask`` with the child's stderr

    def ask(self, request: dict) -> dict:
        if self._proc.poll() is not None:
            raise self._failure(f"the child exited with {self._proc.returncode}")
        self._send(request)
        ready, _, _ = select.select([self._proc.stdout], [], [], self._timeout_s)
        if not ready:
            self._proc.kill()
            self._proc.wait()
            raise TimeoutError(f"no answer within {self._timeout_s} s; child stopped")
        line = self._proc.stdout.readline()
        if not line:
            raise self._failure(f"the child exited with {self._proc.wait()}")
        return json.loads(line)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._stderr.close()


class TorchPeers:
    """``timer(impl, problem)``: a function that times one round of torch SDPA with ``impl``'s
    backend (``torch_cudnn``, ``torch_fa2``) on ``problem`` (a ``benchmark.Problem``) in the
    child and returns ``(ms per call, None)``, as ``benchmark.jax_timer``'s do."""

    def __init__(self, *, iters: int, repeats: int, timer: str, timeout_s: float):
        setup = dict(iters=iters, repeats=repeats, timer=timer)
        self._child = Child(_WORKER, setup, timeout_s=timeout_s)

    def timer(self, impl: str, problem) -> Callable[[], tuple[float, None]]:
        request = dict(impl=impl, problem=dataclasses.asdict(problem))

        def one_round():
            answer = self._child.ask(request)
            if "error" in answer:
                raise RuntimeError(answer["error"])
            return answer["ms"], None

        return one_round

    def close(self) -> None:
        self._child.close()
