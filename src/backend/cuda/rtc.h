// Run-time compilation of generated CUDA kernels (rtc.cu): NVRTC turns a source
// into machine code for the device in use, the runtime's library API loads it, and
// kernels are cached per process by a hash of their source. Host-only; never call
// it while a stream is being captured (loading a module is not a stream operation).
#pragma once
#include <cuda_runtime.h>
#include <string>

// The kernel `entry` (extern "C") of src, compiled once per distinct source; NULL
// when NVRTC is unusable or the source does not compile (*why says why; the caller
// falls back, and a one-time warning went to stderr under WICK_DEBUG_ERRORS).
cudaKernel_t wkc_rtc_kernel(const std::string &src, const char *entry, std::string *why);

// Compilations done, failed, and the host milliseconds they took (successful ones, and
// the loads from the disk cache); *loaded (NULL: not wanted): images the disk cache gave.
void wkc_rtc_counts(unsigned long long *compiled, unsigned long long *failed, double *ms, unsigned long long *loaded);
// The disk cache's directory ("": none).
const char *wkc_rtc_disk_dir(void);
// Writes "wick: <msg>" to stderr once per process, and only under WICK_DEBUG_ERRORS.
void wkc_rtc_warn_once(const char *msg);
