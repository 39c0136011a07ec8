#include "engine/engine.h"

#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace trams {

absl::Status CheckBatch(const ModelConfig& config, absl::Span<const SegmentInput> batch) {
  if (batch.empty()) return absl::InvalidArgumentError("empty batch: nothing to run");
  std::unordered_set<const EngineStream*> seen;
  const int64_t vocab = config.vocab_size;
  for (size_t b = 0; b < batch.size(); ++b) {
    const SegmentInput& in = batch[b];
    if (in.stream == nullptr) return absl::InvalidArgumentError(absl::StrCat("batch entry ", b, " has no stream"));
    if (!seen.insert(in.stream).second) {
      return absl::InvalidArgumentError(absl::StrCat("batch entry ", b, " repeats a stream: one segment per stream"));
    }
    if (in.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("batch entry ", b, " has no tokens"));
    if (in.tokens.size() > static_cast<size_t>(INT32_MAX / 4)) {
      return absl::InvalidArgumentError(absl::StrCat("batch entry ", b, " has ", in.tokens.size(),
                                                     " tokens: too many for one segment"));
    }
    if (in.options.alternatives < 0) {
      return absl::InvalidArgumentError(absl::StrCat("batch entry ", b, ": alternatives must not be negative"));
    }
    for (size_t i = 0; i < in.tokens.size(); ++i) {
      if (in.tokens[i] < 0 || in.tokens[i] >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", in.tokens[i], " at position ", i,
                                                       " of batch entry ", b, " is outside the vocabulary [0, ",
                                                       vocab, ")"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace trams
