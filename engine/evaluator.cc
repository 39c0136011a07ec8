#include "engine/evaluator.h"
#include "engine/evaluator_loop.h"

#include <chrono>
#include <cmath>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace trams {

absl::StatusOr<EvalResult> Evaluate(TransformerXL& model, absl::Span<const int32_t> ids, const EvalOptions& options) {
  return EvaluateLoop<TransformerXL, SegmentInput>(model, ids, options);
}

int64_t PeakResidentBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

}  // namespace trams
