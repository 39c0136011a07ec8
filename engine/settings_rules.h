// The rules every backend applies to a stream's memory settings and to a batch entry, with one set of
// messages: plain C++ (no absl, no CUDA) so that both the host engine (trams_engine) and the CUDA
// backend's orchestration (trams_cuda_core, behind the C ABI) compile it. Each check returns the error
// message, empty when the input is fine; the callers wrap it into their own status type.
#pragma once

#include <cstdint>
#include <string>

namespace trams::engine {

// Memory modes, numbered as the C ABI's trams_cuda_memory_mode (TRAMS_CUDA_MODE_NONE = 0, XL = 1, TRAMS = 2).
enum class MemoryMode { kNone = 0, kXl = 1, kTrams = 2 };

// Largest pool (and topk, remain) any stream may ask for, so that size arithmetic cannot overflow.
constexpr int kMaxMemLen = 1 << 20;

// A stream's memory settings as the rules see them (TramsSettings, or the C ABI's
// trams_cuda_stream_settings once its enums are known to be valid).
struct SettingsView {
  MemoryMode mode = MemoryMode::kTrams;
  int mem_len = 0, topk = 0, remain = 0;
  const int* layers = nullptr;  // the layers that select; none = every layer (TRAMS only)
  int n_layers = 0;
};

// Sizes, mode and selection layers against a model of `model_layers` layers.
std::string SettingsError(const SettingsView& s, int model_layers);
// Memory tokens attended at most (m): 0 (none), mem_len (xl), topk + remain (trams). Also same_length's window.
int AttendLen(MemoryMode mode, int mem_len, int topk, int remain);
// Whether TRAMS selection is on at `layer` (TramsSettings::SelectsOnLayer).
bool SelectsOnLayer(const SettingsView& s, int layer);
// Newest memory tokens a segment attends without selection, from a pool of `pool_size` tokens: `remain`
// where TRAMS selects (pool_size > topk + remain), else all it attends (min(pool_size, m)).
int RecentAttended(const SettingsView& s, int pool_size);

// The checks of batch entry `entry`, in this order: it has a stream, the stream is not repeated; then it has
// tokens, not too many, `alternatives` is not negative, and every id is in [0, vocab).
inline constexpr const char kEmptyBatchMessage[] = "empty batch: nothing to run";
std::string EntryStreamError(int64_t entry, bool has_stream, bool repeats_a_stream);
std::string EntryTokensError(int64_t entry, const int32_t* tokens, int64_t n_tokens, int64_t vocab,
                             int alternatives = 0);

}  // namespace trams::engine
