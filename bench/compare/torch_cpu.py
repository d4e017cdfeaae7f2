"""wick's bench cases on PyTorch CPU, eager and torch.compile (inductor).

    .venv-bench/bin/python bench/compare/torch_cpu.py [--wick build/wick] [--json] [--filter S]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets thread env vars before numpy/torch load)
from common import NotSupported  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(common.THREADS)
torch._dynamo.config.cache_size_limit = 64


def lora(x, W, A, B, s):
    return x @ W + s * ((x @ A) @ B)


def rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + common.EPS) * w


def chain8(x, y):
    t = x + y
    t = t * y
    t = t - x
    t = t * 0.5
    t = torch.tanh(t)
    t = t + 1
    t = t * x
    return t.abs()


def chained(f, n):
    def g(x, *rest):
        for _ in range(n):
            x = f(x, *rest)
        return x
    return g


def forward_fn(case, t):
    """(function, args) for the forward cases."""
    k = case.kind
    if k == "lora_fwd":
        return chained(lora, case.chain), (t["x"], t["W"], t["A"], t["B"], case.scale)
    if k == "softmax":
        return chained(lambda x: torch.softmax(x, -1), case.chain), (t["x"],)
    if k == "rmsnorm":
        return chained(rmsnorm, case.chain), (t["x"], t["w"])
    if k == "chain8":
        return chain8, (t["x"], t["y"])
    if k == "matmul":
        return torch.matmul, (t["a"], t["b"])
    if k == "copy":
        return torch.clone, (t["x"],)
    raise NotSupported(k)


def train_step(case, t, compiled):
    x, W, target = t["x"], t["W"], t["target"]
    A, B = t["A"].requires_grad_(), t["B"].requires_grad_()
    opt = torch.optim.AdamW([A, B], lr=common.LR)

    def loss_fn():
        return F.mse_loss(lora(x, W, A, B, case.scale), target)

    loss_c = torch.compile(loss_fn) if compiled else loss_fn
    step_c = torch.compile(opt.step) if compiled else opt.step

    def step():
        opt.zero_grad(set_to_none=True)
        loss_c().backward()
        step_c()
    return step


def build(case, mode, ins):
    t = {k: torch.from_numpy(v.copy()) for k, v in ins.items()}
    compiled = mode == "torch-compile"
    if case.kind == "lora_train":
        return train_step(case, t, compiled)
    f, args = forward_fn(case, t)
    if compiled:
        torch._dynamo.reset()
        f = torch.compile(f, dynamic=False)

    def run():
        with torch.no_grad():
            return f(*args)
    return run


def extras(case, ins):
    """Copy-bandwidth and BLAS references beside the wick cases."""
    if case.kind == "matmul":
        a, b = ins["a"], ins["b"]
        return [(case.name + "/numpy", "numpy", lambda: a @ b, case.flops(), None)]
    if case.kind != "copy":
        return []
    n = ins["x"].size * 4
    src, dst, c = ins["x"], np.empty_like(ins["x"]), ins["x"][::-1].copy()
    ts, td, tc = (torch.from_numpy(v) for v in (src, dst, c))
    return [
        (case.name + "/numpy-copy", "numpy", src.copy, None, 2 * n),
        (case.name + "/stream-copy", "numpy", lambda: np.copyto(dst, src), None, 2 * n),
        (case.name + "/stream-copy", "torch-eager", lambda: td.copy_(ts), None, 2 * n),
        (case.name + "/stream-triad", "torch-eager",
         lambda: torch.add(ts, tc, alpha=3.0, out=td), None, 3 * n),
    ]


PEER = common.Peer(
    title=f"torch {torch.__version__} (numpy {np.__version__})",
    modes=[("torch-eager", "torch eager"), ("torch-compile", "torch compile")],
    build=build,
    extras=extras,
    notes=["lora_train_step: torch.optim.AdamW (foreach; betas .9/.999, eps 1e-8, wd 0.01); "
           "compile mode compiles the loss (fwd+bwd via AOTAutograd) and opt.step",
           f"torch BLAS: {torch.backends.mkl.is_available() and 'MKL' or 'non-MKL'}; "
           "numpy references use numpy's bundled OpenBLAS"],
)

if __name__ == "__main__":
    common.main(PEER, os.path.abspath(__file__))
