// One comparison of an engine's outputs with a golden case (tests/golden/cases), shared by every backend:
// the host engine (tests/engine/golden_test) and the CUDA backend and its emulation
// (tests/cuda/cuda_golden_test). Test-only.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>

#include "engine/engine.h"

namespace trams::golden {

// Absolute, on log-probs and entropies: the engines compute in f32, the reference in float64 (a float32
// run of the reference stays within ~3e-6 of it, tests/reference/README.md). TRAMS-selected pool indices
// and top-5 ids must be identical: make_goldens.py keeps every such decision clear of f32 rounding.
inline constexpr double kLogProbTolerance = 1e-4;

// What a comparison covered, for the caller's own checks and its one-line report.
struct Comparison {
  int64_t logprobs = 0;    // scored tokens compared (log-prob, entropy, top-5 ids)
  int64_t selections = 0;  // non-empty TRAMS selections compared (segment, layer, stream, head)
  double max_logprob_error = 0;
  double max_entropy_error = 0;
};

// Runs golden case `c` on `engine`, one new stream per input stream (pools zero-filled in reference-compat
// cases), segment by segment, and checks every output with gtest assertions. Returns early on a fatal
// failure: call it inside ASSERT_NO_FATAL_FAILURE.
void CompareWithGolden(engine::Engine& engine, const nlohmann::json& c, Comparison* result);

}  // namespace trams::golden
