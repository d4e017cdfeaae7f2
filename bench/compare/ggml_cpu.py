"""wick's bench cases as ggml graphs on ggml's CPU backend (pip `ggml-python`), 2 threads.

    .venv-bench/bin/python bench/compare/ggml_cpu.py [--wick build/wick] [--json] [--filter S]

Each case's graph is built once; a call is one ggml_graph_compute on a persistent
2-thread pool. ggml's mul_mat(a, b) computes b @ a^T, so weights are stored
transposed (ggml's own layout); the arithmetic is the same as the other peers'.
"""

import ctypes
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import NotSupported  # noqa: E402

import numpy as np  # noqa: E402

try:
    import ggml
except ImportError as e:
    print(f"ggml-python unavailable ({e}); install with: pip install ggml-python "
          "(tools/bench-venv does). Skipping ggml.")
    sys.exit(0)

F32 = ggml.GGML_TYPE_F32
_pool_params = ggml.ggml_threadpool_params_default(common.THREADS)
POOL = ggml.ggml_threadpool_new(ctypes.byref(_pool_params))
_live = []  # the previous case's context, freed when the next one is built


def view(t):
    """Flat numpy view of a ggml tensor's data."""
    n = ggml.ggml_nelements(t)
    return np.ctypeslib.as_array(ctypes.cast(ggml.ggml_get_data(t), ctypes.POINTER(ctypes.c_float)), (n,))


def tensor(ctx, arr):
    """New f32 tensor holding numpy array arr (ggml ne = reversed numpy shape)."""
    ne = (ctypes.c_int64 * arr.ndim)(*reversed(arr.shape))
    t = ggml.ggml_new_tensor(ctx, F32, arr.ndim, ne)
    view(t)[:] = arr.ravel()
    return t


def lora(ctx, x, Wt, At, Bt, s):
    xw = ggml.ggml_mul_mat(ctx, Wt, x)
    xab = ggml.ggml_mul_mat(ctx, Bt, ggml.ggml_mul_mat(ctx, At, x))
    return ggml.ggml_add(ctx, xw, ggml.ggml_scale(ctx, xab, s))


def chain8(ctx, x, y):
    t = ggml.ggml_add(ctx, x, y)
    t = ggml.ggml_mul(ctx, t, y)
    t = ggml.ggml_sub(ctx, t, x)
    t = ggml.ggml_scale(ctx, t, 0.5)
    t = ggml.ggml_tanh(ctx, t)
    t = ggml.ggml_scale_bias(ctx, t, 1.0, 1.0)  # t + 1
    t = ggml.ggml_mul(ctx, t, x)
    return ggml.ggml_abs(ctx, t)


def forward(ctx, case, ins):
    k = case.kind
    if k == "lora_fwd":
        y = tensor(ctx, ins["x"])
        Wt, At, Bt = (tensor(ctx, np.ascontiguousarray(ins[n].T)) for n in "WAB")
        for _ in range(case.chain):
            y = lora(ctx, y, Wt, At, Bt, case.scale)
        return y
    if k == "softmax":
        y = tensor(ctx, ins["x"])
        for _ in range(case.chain):
            y = ggml.ggml_soft_max(ctx, y)
        return y
    if k == "rmsnorm":
        y, w = tensor(ctx, ins["x"]), tensor(ctx, ins["w"])
        for _ in range(case.chain):
            y = ggml.ggml_mul(ctx, ggml.ggml_rms_norm(ctx, y, common.EPS), w)
        return y
    if k == "chain8":
        return chain8(ctx, tensor(ctx, ins["x"]), tensor(ctx, ins["y"]))
    if k == "matmul":  # mul_mat(b^T, a) = a @ b
        return ggml.ggml_mul_mat(ctx, tensor(ctx, np.ascontiguousarray(ins["b"].T)), tensor(ctx, ins["a"]))
    if k == "copy":
        x = tensor(ctx, ins["x"])
        return ggml.ggml_cpy(ctx, x, ggml.ggml_dup_tensor(ctx, x))
    raise NotSupported(k)


def train_graph(ctx, case, ins):
    """Forward, MSE loss, backward to A and B, and ggml_opt_step_adamw on both."""
    x, target = tensor(ctx, ins["x"]), tensor(ctx, ins["target"])
    Wt, At, Bt = (tensor(ctx, np.ascontiguousarray(ins[n].T)) for n in "WAB")
    for p in (At, Bt):
        ggml.ggml_set_param(p)
    d = ggml.ggml_sub(ctx, lora(ctx, x, Wt, At, Bt, case.scale), target)
    loss = ggml.ggml_scale(ctx, ggml.ggml_sum(ctx, ggml.ggml_sqr(ctx, d)), 1.0 / d.contents.ne[0]
                           / math.prod(d.contents.ne[1:4]))
    ggml.ggml_set_loss(loss)
    gb = ggml.ggml_new_graph_custom(ctx, ggml.GGML_DEFAULT_GRAPH_SIZE, True)
    ggml.ggml_build_forward_expand(gb, loss)
    ggml.ggml_build_backward_expand(ctx, gb, None)
    # adamw params: alpha, beta1, beta2, eps, wd, 1/(1-beta1^t), 1/(1-beta2^t)
    pars = tensor(ctx, np.array([common.LR, 0.9, 0.999, 1e-8, 0.01, 1, 1], np.float32))
    for p in (At, Bt):
        m, v = (ggml.ggml_dup_tensor(ctx, p) for _ in range(2))
        ggml.ggml_build_forward_expand(gb, ggml.ggml_opt_step_adamw(
            ctx, p, ggml.ggml_graph_get_grad(gb, p), m, v, pars))
    ggml.ggml_graph_reset(gb)  # loss grad = 1, zero momenta
    pv, it = view(pars), [0]

    def before():
        it[0] += 1
        pv[5], pv[6] = 1 / (1 - 0.9 ** it[0]), 1 / (1 - 0.999 ** it[0])
    return gb, before


def build(case, mode, ins):
    while _live:
        ggml.ggml_free(_live.pop())
    big = max(a.nbytes for a in ins.values())
    mem = ggml.ggml_graph_overhead_custom(ggml.GGML_DEFAULT_GRAPH_SIZE, True) + 24 * big + (64 << 20)
    ctx = ggml.ggml_init(ggml.ggml_init_params(mem_size=mem, mem_buffer=None, no_alloc=False))
    _live.append(ctx)
    before = None
    if case.kind == "lora_train":
        gf, before = train_graph(ctx, case, ins)
    else:
        gf = ggml.ggml_new_graph(ctx)
        ggml.ggml_build_forward_expand(gf, forward(ctx, case, ins))
    plan = ggml.ggml_graph_plan(gf, common.THREADS, POOL)
    work = ctypes.create_string_buffer(max(plan.work_size, 1))
    plan.work_data = ctypes.cast(work, ctypes.POINTER(ctypes.c_uint8))
    pplan = ctypes.byref(plan)

    def run(work=work):  # keeps the work buffer alive
        if before:
            before()
        if ggml.ggml_graph_compute(gf, pplan) != 0:
            raise RuntimeError("ggml_graph_compute failed")
    return run


PEER = common.Peer(
    title="ggml (ggml-python)",
    modes=[("ggml-graph", "ggml graph")],
    build=build,
    notes=["ggml: one prebuilt graph per case, ggml_graph_compute on a persistent 2-thread "
           "threadpool; lora_train_step uses ggml_build_backward_expand + ggml_opt_step_adamw"],
)

if __name__ == "__main__":
    try:
        from importlib.metadata import version
        PEER.title = f"ggml-python {version('ggml-python')}"
    except Exception:
        pass
    common.main(PEER, os.path.abspath(__file__))
