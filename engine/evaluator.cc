#include "engine/evaluator.h"

#include <chrono>
#include <cmath>
#include <algorithm>
#include <fstream>
#include <memory>
#include <vector>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace trams::engine {

absl::StatusOr<EvalResult> Evaluate(Engine& model, absl::Span<const int32_t> ids, const EvalOptions& options) {
  if (options.tgt_len <= 0) return absl::InvalidArgumentError(absl::StrCat("tgt_len must be positive, got ", options.tgt_len));
  if (options.batch <= 0) return absl::InvalidArgumentError(absl::StrCat("batch must be positive, got ", options.batch));
  if (options.max_tokens >= 0 && options.max_tokens < static_cast<int64_t>(ids.size())) {
    ids = ids.subspan(0, options.max_tokens);
  }
  int64_t stream_len = static_cast<int64_t>(ids.size()) / options.batch;
  if (options.reference_compat) stream_len -= 1;
  if (stream_len < 2) {
    return absl::InvalidArgumentError(absl::StrCat("input too short: ", ids.size(), " tokens cannot make ",
                                                   options.batch, " streams of at least 2 tokens"));
  }
  std::vector<std::unique_ptr<EngineStream>> streams;
  for (int b = 0; b < options.batch; ++b) {
    ASSIGN_OR_RETURN(auto stream, model.NewStream(options.settings));
    if (options.reference_compat) RETURN_IF_ERROR(model.FillPoolWithZeroStates(stream.get()));
    streams.push_back(std::move(stream));
  }
  const int64_t full_len = static_cast<int64_t>(ids.size()) / options.batch;
  EvalResult result;
  ASSIGN_OR_RETURN(result.pool_bytes_per_stream, model.StreamBytes(options.settings));
  double nll = 0;
  // The authors' test() aggregate (reference_compat): sum of seq_len * (mean loss of the segment batch)
  // over sum of seq_len. A segment with no scored token (length 1) is left out; theirs would be NaN.
  double weighted_nll = 0, weighted_len = 0;
  std::vector<SegmentInput> batch(options.batch);
  std::vector<SegmentOutput> outputs;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t pos = 0; pos < stream_len; pos += options.tgt_len) {
    const int64_t n = std::min<int64_t>(options.tgt_len, stream_len - pos);
    for (int b = 0; b < options.batch; ++b) {
      batch[b].stream = streams[b].get();
      batch[b].tokens = ids.subspan(b * full_len + pos, n);
    }
    RETURN_IF_ERROR(model.Forward(batch, &outputs));
    double segment_nll = 0;
    int64_t segment_scored = 0;
    for (const SegmentOutput& out : outputs) {
      for (size_t i = options.reference_compat ? 1 : 0; i < out.logprob.size(); ++i) {
        if (std::isnan(out.logprob[i])) continue;
        segment_nll -= out.logprob[i];
        ++segment_scored;
      }
    }
    nll += segment_nll;
    result.scored += segment_scored;
    if (segment_scored > 0) {
      weighted_nll += static_cast<double>(n) * (segment_nll / static_cast<double>(segment_scored));
      weighted_len += static_cast<double>(n);
    }
    result.tokens += n * options.batch;
    if (options.progress) options.progress(pos + n, stream_len);
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (options.reference_compat) {
    result.loss = weighted_len > 0 ? weighted_nll / weighted_len : 0.0;
  } else {
    result.loss = result.scored > 0 ? nll / static_cast<double>(result.scored) : 0.0;
  }
  result.ppl = std::exp(result.loss);
  result.bpc = result.loss / std::log(2.0);
  result.tokens_per_second = result.seconds > 0 ? static_cast<double>(result.tokens) / result.seconds : 0.0;
  return result;
}


int64_t PeakResidentBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

}  // namespace trams::engine
