// The paper's evaluation protocol (Appendix B): one token stream cut into `batch` parallel streams,
// each run in segments of `tgt_len` tokens with its memory carried across segments.
#pragma once

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/engine.h"

namespace trams::engine {

struct EvalOptions {
  TramsSettings settings;
  int tgt_len = 64;         // n: tokens per segment
  int batch = 10;           // parallel streams
  int64_t max_tokens = -1;  // use only the first T tokens (< 0: all)
  // Reproduce the authors' evaluation: zero-filled initial pools, labels shifted inside each segment
  // (the first token of a segment is not scored), each stream's last token left out as their
  // iterator does, and their loss aggregate (see EvalResult::loss).
  bool reference_compat = false;
  std::function<void(int64_t done, int64_t total)> progress;  // called after each segment batch
};

struct EvalResult {
  // Mean negative log-likelihood per scored token, nats. With reference_compat, the authors' test()
  // aggregate instead: each segment batch's mean weighted by the segment length,
  // sum(seq_len * mean) / sum(seq_len) (differs when the last segment is shorter).
  double loss = 0;
  double ppl = 0;
  double bpc = 0;   // bits per token (per character for byte models)
  int64_t tokens = 0;         // tokens fed to the model
  int64_t scored = 0;         // tokens whose log-prob counts in the loss
  double seconds = 0;         // wall time of the forward passes
  double tokens_per_second = 0;
  int64_t pool_bytes_per_stream = 0;
};

// Over any backend; the streams are made, filled (reference_compat) and run through `model`.
absl::StatusOr<EvalResult> Evaluate(Engine& model, absl::Span<const int32_t> ids, const EvalOptions& options);

// Peak resident set size of this process in bytes (VmHWM), 0 if unknown.
int64_t PeakResidentBytes();

}  // namespace trams::engine
