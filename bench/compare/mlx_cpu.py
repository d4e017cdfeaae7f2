"""wick's bench cases on MLX's CPU backend (pip `mlx[cpu]` on Linux), lazy and mx.compile.

    .venv-bench/bin/python bench/compare/mlx_cpu.py [--wick build/wick] [--json] [--filter S]

Each call builds the lazy graph and ends with mx.eval, so it is timed to completion.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import NotSupported  # noqa: E402

try:
    import mlx.core as mx
    import mlx.optimizers as optim
except ImportError as e:  # `mlx` alone has no libmlx.so on Linux: needs mlx[cpu]
    print(f"mlx unavailable ({e}); install with: pip install 'mlx[cpu]' "
          "(tools/bench-venv does). Skipping MLX.")
    sys.exit(0)

mx.set_default_device(mx.cpu)


def lora(x, W, A, B, s):
    return x @ W + s * ((x @ A) @ B)


def chain8(x, y):
    t = x + y
    t = t * y
    t = t - x
    t = t * 0.5
    t = mx.tanh(t)
    t = t + 1
    t = t * x
    return mx.abs(t)


def chained(f, n):
    def g(x, *rest):
        for _ in range(n):
            x = f(x, *rest)
        return x
    return g


def forward_fn(case, t):
    k = case.kind
    if k == "lora_fwd":
        s = case.scale
        return chained(lambda x, W, A, B: lora(x, W, A, B, s), case.chain), (t["x"], t["W"], t["A"], t["B"])
    if k == "softmax":
        return chained(lambda x: mx.softmax(x, axis=-1), case.chain), (t["x"],)
    if k == "rmsnorm":
        return chained(lambda x, w: mx.fast.rms_norm(x, w, common.EPS), case.chain), (t["x"], t["w"])
    if k == "chain8":
        return chain8, (t["x"], t["y"])
    if k == "matmul":
        return mx.matmul, (t["a"], t["b"])
    if k == "copy":
        return mx.array, (t["x"],)  # mx.array(a) copies a
    raise NotSupported(k)


def train_step(case, t, compiled):
    x, W, target, s = t["x"], t["W"], t["target"], case.scale
    params = {"A": t["A"], "B": t["B"]}
    opt = optim.AdamW(learning_rate=common.LR, bias_correction=True)  # torch's AdamW
    opt.init(params)

    def loss_fn(p):
        return mx.mean(mx.square(lora(x, W, p["A"], p["B"], s) - target))

    grad_fn = mx.value_and_grad(loss_fn)
    state = [params, opt.state]

    def step():
        loss, g = grad_fn(params)
        params.update(opt.apply_gradients(g, params))
        return loss

    if compiled:
        step = mx.compile(step, inputs=state, outputs=state)

    def run():
        loss = step()
        mx.eval(loss, state)
    return run


def build(case, mode, ins):
    t = {k: mx.array(v) for k, v in ins.items()}
    mx.eval(t)
    compiled = mode == "mlx-compile"
    if case.kind == "lora_train":
        return train_step(case, t, compiled)
    f, args = forward_fn(case, t)
    if compiled:
        if case.kind == "copy":
            raise NotSupported("copy is not a graph op")
        f = mx.compile(f)
    return lambda: mx.eval(f(*args))


PEER = common.Peer(
    title=f"mlx {mx.__version__}",
    modes=[("mlx-lazy", "mlx lazy"), ("mlx-compile", "mlx compile")],
    build=build,
    threads="1 thread (MLX runs CPU ops on one stream thread; not settable)",
    notes=["mlx[cpu] on Linux links the reference (netlib) BLAS bundled in mlx_cpu.libs: "
           "its matmuls are single-threaded and unblocked",
           "rmsnorm uses mx.fast.rms_norm; lora_train_step uses mlx.optimizers.AdamW "
           "(bias_correction=True, wd 0.01)"],
)

if __name__ == "__main__":
    common.main(PEER, os.path.abspath(__file__))
