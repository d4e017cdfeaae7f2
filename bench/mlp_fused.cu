// Whether a decode layer's MLP runs faster as one kernel than as two (issue 6's next
// lever: a layer's kernel boundaries, not its bytes, hold decode at ~51% of the bound).
//
// Qwen2.5-0.5B's shapes: h [896] f32, the RMSNorm weight [896] f32, gate and up
// W [4864, 896] bf16, down W [896, 4864] bf16:
//     x = rms_norm(h) * nw,  a = silu(gate x) * (up x),  y = h + down a.
// 24 layers with weights of their own (627 MB: nothing stays in the 50 MB L2), chained
// (layer L's y is layer L + 1's h), captured as one CUDA graph in which every kernel is
// a programmatic dependent of the one before (PDL, as wick's decode launches them), and
// replayed. Each variant issues its constant W loads before its griddepcontrol.wait.
//  two:   k_gateup (every block does the norm; 16 intermediate rows a block) writes a,
//         then k_down (4 output rows a block, 2 warps a row) adds h. Like wick's decode.
//  fused: k_mlp: block b owns intermediate rows [40 b, 40 b + 40): their gate and up
//         dots, their a (in shared memory), and down's 40 columns for all 896 outputs,
//         added to the layer's accumulator by float atomics (so the order of the sums
//         varies from run to run). The next layer reads h as (the h before) + (that
//         accumulator); its block 0 stores that h for the layer after, and zeroes the
//         accumulator the layer after it will add to (three take turns).
//  det:   the same kernel, deterministic: each block stores its 896 partial sums, all
//         blocks meet at a counter (safe: a PDL dependent launches only once every block
//         of the kernel before has started, so all 122 are resident), and block b then
//         adds outputs [8 b, 8 b + 8) over the blocks' partials in block order, plus h.
// Both are checked against a host reference in double (relative error over 1e-3 fails the
// run); the figure is µs a layer.
//
//   nvcc -std=c++17 -arch=sm_90 -O3 -o /tmp/mlp_fused bench/mlp_fused.cu && /tmp/mlp_fused
#include "decode_layer.cuh"

// ---- one kernel ----
#define FR 40                          // intermediate rows a block (a multiple of 8: 16-byte slices of down)
#define FW (FR / 4)                    // warps: 4 intermediate rows each, 2 at a time
#define FNT (FW * 32)
#define FNB ((I + FR - 1) / FR)        // 122 blocks: one wave at one block an SM
#define FDC (FR / 8)                   // 16-byte chunks of a down row's slice: 5
#define FDR ((H + FNT - 1) / FNT)      // down rows a thread: 3 (the last for threads < 256)

__device__ __forceinline__ unsigned ld_acquire(const unsigned *p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// DET: base is h (acc_in, acc_out and acc_zero unused), hout gets y; part [FNB, H] and
// count (zero before the launch) are the partial sums and the blocks' meeting point.
template <bool DET>
__global__ void __launch_bounds__(FNT, 1) k_mlp(Layer w, const float *base, const float *acc_in, float *hout,
                                                float *acc_out, float *acc_zero, float *part, unsigned *count) {
  __shared__ __align__(16) float xs[H];
  __shared__ __align__(16) float as[FR];
  __shared__ float red[FW];
  pdl_trigger();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, j0 = blockIdx.x * FR;
  // down's slice: rows threadIdx.x + FNT k, columns [j0, j0 + FR) (fewer in the last block)
  uint4 wd[FDR][FDC];
#pragma unroll
  for (int k = 0; k < FDR; k++) {
    const int i = threadIdx.x + FNT * k;
    const uint4 *p = (const uint4 *)(w.wd + (size_t)(i < H ? i : 0) * I + j0);
#pragma unroll
    for (int c = 0; c < FDC; c++) wd[k][c] = i < H && j0 + 8 * c < I ? ldw(p + c) : make_uint4(0, 0, 0, 0);
  }
  uint4 wr[4][KCL];   // a round: intermediate rows 2 r and 2 r + 1 of the warp's 4
  load_pair(wr, w, j0 + warp * 4, lane);
  pdl_wait();
  norm_x<FNT>(base, acc_in, acc_in ? 1 : 0, w.nw, xs, red, !DET && blockIdx.x == 0 ? hout : NULL);
  if (!DET && blockIdx.x == 0 && acc_zero)
    for (int i = threadIdx.x; i < H; i += FNT) acc_zero[i] = 0.0f;
#pragma unroll
  for (int rnd = 0; rnd < 2; rnd++) {
    if (rnd) load_pair(wr, w, j0 + warp * 4 + 2, lane);
    const float av = swiglu_pair(wr, xs, lane);   // 0 past I (zero W)
    if (lane < 2) as[warp * 4 + rnd * 2 + lane] = av;
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < FDR; k++) {
    const int i = threadIdx.x + FNT * k;
    if (i >= H) continue;
    float p = 0.0f;
#pragma unroll
    for (int c = 0; c < FDC; c++) p = dot_bf16x8(wd[k][c], as + 8 * c, p);
    if (DET) part[(size_t)blockIdx.x * H + i] = p;
    else atomicAdd(acc_out + i, p);
  }
  if (!DET) return;
  __threadfence();   // every thread's partial sums visible GPU-wide before its block counts in
  __syncthreads();
  if (threadIdx.x == 0) {
    atomicAdd(count, 1u);
    while (ld_acquire(count) < gridDim.x) {}
  }
  __syncthreads();
  constexpr int COLS = 8, GROUPS = FNT / COLS;   // 40 threads an output, each a fixed set of blocks
  __shared__ float sums[GROUPS][COLS];
  const int col = blockIdx.x * COLS + threadIdx.x % COLS, g = threadIdx.x / COLS;
  float t = 0.0f;
  if (col < H)
    for (int b = g; b < (int)gridDim.x; b += GROUPS) t += __ldcg(part + (size_t)b * H + col);
  sums[g][threadIdx.x % COLS] = t;
  __syncthreads();
  if (threadIdx.x < COLS && col < H) {
    float y = 0.0f;
    for (int q = 0; q < GROUPS; q++) y += sums[q][threadIdx.x];
    hout[col] = base[col] + y;
  }
}

int main() {
  const size_t gu = (size_t)I * H, per = 3 * gu;
  std::vector<uint16_t> hw((size_t)LAYERS * per);
  std::vector<float> hnw((size_t)LAYERS * H), h0(H);
  for (size_t l = 0; l < LAYERS; l++) {
    for (size_t i = 0; i < 2 * gu; i++) hw[l * per + i] = to_bf16(urand() * 0.0334f);         // gate, up: ~1/sqrt(H)
    for (size_t i = 2 * gu; i < per; i++) hw[l * per + i] = to_bf16(urand() * 0.0143f);       // down: ~1/sqrt(I)
    for (int i = 0; i < H; i++) hnw[l * H + i] = 1.0f + 0.1f * urand();
  }
  for (int i = 0; i < H; i++) h0[i] = urand();
  // the reference, in double from the same bf16 weights
  std::vector<double> ref(h0.begin(), h0.end()), x(H), av(I);
  for (int l = 0; l < LAYERS; l++) {
    const uint16_t *wg = &hw[l * per], *wu = wg + gu, *wd = wg + 2 * gu;
    double ss = 0;
    for (int i = 0; i < H; i++) ss += ref[i] * ref[i];
    const double r = 1.0 / sqrt(ss / H + EPS);
    for (int i = 0; i < H; i++) x[i] = ref[i] * r * hnw[l * H + i];
    for (int j = 0; j < I; j++) {
      double g = 0, u = 0;
      for (int k = 0; k < H; k++) g += from_bf16(wg[(size_t)j * H + k]) * x[k], u += from_bf16(wu[(size_t)j * H + k]) * x[k];
      av[j] = g / (1.0 + exp(-g)) * u;
    }
    for (int i = 0; i < H; i++) {
      double d = 0;
      for (int j = 0; j < I; j++) d += from_bf16(wd[(size_t)i * I + j]) * av[j];
      ref[i] += d;
    }
  }
  uint16_t *dw;
  float *dnw, *hb, *abuf, *acc, *part;
  unsigned *count;
  CK(cudaMalloc(&dw, hw.size() * 2));
  CK(cudaMalloc(&dnw, hnw.size() * 4));
  CK(cudaMalloc(&hb, (size_t)(LAYERS + 1) * H * 4));
  CK(cudaMalloc(&abuf, (size_t)I * 4));
  CK(cudaMalloc(&acc, (size_t)3 * H * 4));
  CK(cudaMalloc(&part, (size_t)FNB * H * 4));
  CK(cudaMalloc(&count, LAYERS * sizeof(unsigned)));
  CK(cudaMemcpy(dw, hw.data(), hw.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dnw, hnw.data(), hnw.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(hb, h0.data(), H * 4, cudaMemcpyHostToDevice));
  std::vector<Layer> ly(LAYERS);
  for (int l = 0; l < LAYERS; l++)
    ly[l] = {dw + l * per, dw + l * per + gu, dw + l * per + 2 * gu, dnw + (size_t)l * H};
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  printf("MLP of Qwen2.5-0.5B's shapes, %d layers chained, %.1f MB of weights a layer; µs a layer, replays of one graph\n",
         LAYERS, per * 2 / 1e6);
  double us[3];
  bool right = true;
  const char *names[3] = {"two", "fused", "det"};
  setvbuf(stdout, NULL, _IONBF, 0);   // what a variant printed shows even if a later one hangs
  for (int v = 0; v < 3; v++) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    if (v == 0) {
      for (int l = 0; l < LAYERS; l++) {
        launch(l > 0, k_gateup, I / GU_J, GU_WARPS * 32, s, ly[l], (const float *)(hb + (size_t)l * H),
               (const float *)NULL, 0, (float *)NULL, abuf);
        launch(true, k_down, H / DN_ROWS, DN_ROWS * DN_T, s, ly[l], (const float *)abuf, (const float *)(hb + (size_t)l * H),
               hb + (size_t)(l + 1) * H);
      }
    } else if (v == 1) {   // the accumulator of layer 0 zeroed here; layer l zeroes layer l + 1's
      CK(cudaMemsetAsync(acc, 0, H * 4, s));
      for (int l = 0; l < LAYERS; l++) {
        const float *base = hb + (size_t)(l ? l - 1 : 0) * H, *ain = l ? acc + (size_t)((l - 1) % 3) * H : NULL;
        float *hout = l ? hb + (size_t)l * H : NULL, *zero = l + 1 < LAYERS ? acc + (size_t)((l + 1) % 3) * H : NULL;
        launch(l > 0, k_mlp<false>, FNB, FNT, s, ly[l], base, ain, hout, acc + (size_t)(l % 3) * H, zero, (float *)NULL,
               (unsigned *)NULL);
      }
    }
    if (v == 2) {
      CK(cudaMemsetAsync(count, 0, LAYERS * sizeof(unsigned), s));
      for (int l = 0; l < LAYERS; l++)
        launch(l > 0, k_mlp<true>, FNB, FNT, s, ly[l], (const float *)(hb + (size_t)l * H), (const float *)NULL,
               hb + (size_t)(l + 1) * H, (float *)NULL, (float *)NULL, part, count + l);
    }
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    us[v] = replay_us(ge, s, 50) / LAYERS;
    CK(cudaStreamSynchronize(s));
    std::vector<float> out(H), accv(H);
    if (v != 1) {
      CK(cudaMemcpy(out.data(), hb + (size_t)LAYERS * H, H * 4, cudaMemcpyDeviceToHost));
    } else {   // y = the last layer's h + its accumulator
      CK(cudaMemcpy(out.data(), hb + (size_t)(LAYERS - 1) * H, H * 4, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(accv.data(), acc + (size_t)((LAYERS - 1) % 3) * H, H * 4, cudaMemcpyDeviceToHost));
      for (int i = 0; i < H; i++) out[i] += accv[i];
    }
    const double err = max_err(out, ref);
    right &= err <= 1e-3;
    printf("%-6s %7.2f µs a layer (%4.0f GB/s), max error against the reference %.2e%s\n", names[v],
           us[v], per * 2 / (us[v] * 1e3), err, err <= 1e-3 ? "" : "  WRONG (more than 1e-3)");
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
  }
  printf("fused / two: %.3f, det / two: %.3f\n", us[1] / us[0], us[2] / us[0]);
  return right ? 0 : 1;
}
