#include "engine/settings_rules.h"

#include <algorithm>

namespace trams::engine {
namespace {

std::string Sizes(const SettingsView& s) {
  return " (mem_len " + std::to_string(s.mem_len) + ", topk " + std::to_string(s.topk) + ", remain " +
         std::to_string(s.remain) + ")";
}

std::string Entry(int64_t entry) { return "batch entry " + std::to_string(entry); }

}  // namespace

std::string SettingsError(const SettingsView& s, int model_layers) {
  if (s.mem_len < 0 || s.topk < 0 || s.remain < 0) return "memory sizes must not be negative" + Sizes(s);
  // Bounded first, so that every later sum and product of sizes fits (topk + remain in int, pool bytes
  // in int64) whatever a client sends.
  if (s.mem_len > kMaxMemLen || s.topk > kMaxMemLen || s.remain > kMaxMemLen) {
    return "memory sizes must be at most " + std::to_string(kMaxMemLen) + Sizes(s);
  }
  switch (s.mode) {
    case MemoryMode::kNone:
      if (s.mem_len != 0) return "mode 'none' keeps no memory: mem_len must be 0";
      break;
    case MemoryMode::kXl:
      if (s.mem_len == 0) return "mode 'xl' needs mem_len > 0 (use mode 'none' for no memory)";
      break;
    case MemoryMode::kTrams:
      if (s.topk + s.remain > s.mem_len) {
        return "TRAMS attends topk + remain = " + std::to_string(s.topk + s.remain) +
               " tokens, more than the pool holds (mem_len M = " + std::to_string(s.mem_len) + "); need m <= M";
      }
      if (s.topk + s.remain == 0) return "TRAMS needs topk + remain > 0";
      break;
    default:
      return "unknown memory mode " + std::to_string(static_cast<int>(s.mode));
  }
  for (int i = 0; i < s.n_layers; ++i) {
    const int layer = s.layers[i];
    if (layer < 0 || layer >= model_layers) {
      return "selection layer " + std::to_string(layer) + " does not exist (the model has " +
             std::to_string(model_layers) + " layers, numbered from 0)";
    }
  }
  if (s.n_layers > 0 && s.mode != MemoryMode::kTrams) return "selection layers only apply to mode 'trams'";
  return std::string();
}

int AttendLen(MemoryMode mode, int mem_len, int topk, int remain) {
  switch (mode) {
    case MemoryMode::kNone: return 0;
    case MemoryMode::kXl: return mem_len;
    case MemoryMode::kTrams: return topk + remain;
  }
  return 0;
}

bool SelectsOnLayer(const SettingsView& s, int layer) {
  if (s.mode != MemoryMode::kTrams || s.topk == 0) return false;
  if (s.n_layers == 0) return true;
  for (int i = 0; i < s.n_layers; ++i) {
    if (s.layers[i] == layer) return true;
  }
  return false;
}

std::string EntryStreamError(int64_t entry, bool has_stream, bool repeats_a_stream) {
  if (!has_stream) return Entry(entry) + " has no stream";
  if (repeats_a_stream) return Entry(entry) + " repeats a stream: one segment per stream";
  return std::string();
}

std::string EntryTokensError(int64_t entry, const int32_t* tokens, int64_t n_tokens, int64_t vocab,
                             int alternatives) {
  if (n_tokens <= 0 || tokens == nullptr) return Entry(entry) + " has no tokens";
  if (n_tokens > INT32_MAX / 4) {
    return Entry(entry) + " has " + std::to_string(n_tokens) + " tokens: too many for one segment";
  }
  if (alternatives < 0) return Entry(entry) + ": alternatives must not be negative";
  for (int64_t i = 0; i < n_tokens; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return "token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) + " of " + Entry(entry) +
             " is outside the vocabulary [0, " + std::to_string(vocab) + ")";
    }
  }
  return std::string();
}

int RecentAttended(const SettingsView& s, int pool_size) {
  if (s.mode == MemoryMode::kTrams && pool_size > s.topk + s.remain) return s.remain;
  return std::min(pool_size, AttendLen(s.mode, s.mem_len, s.topk, s.remain));
}

}  // namespace trams::engine
