#include "server/session.h"

#include <cmath>

namespace trams::server {

std::string_view SessionStateName(SessionState state) {
  switch (state) {
    case SessionState::kIdle: return "idle";
    case SessionState::kRunning: return "running";
    case SessionState::kDraining: return "draining";
    case SessionState::kRemoved: return "removed";
  }
  return "?";
}

void CallLedger::CountToken(const CallOrigin& origin, int64_t position, int32_t id, float lp, bool provisional) {
  if (position < origin.call_start) {  // an earlier call's provisional token, answered again
    const float old = origin.tail_logprobs[static_cast<size_t>(position - origin.boundary)];
    if (!std::isnan(old)) {
      rescored_count_ -= 1;
      rescored_nll_ += old;
    }
    if (!std::isnan(lp)) {
      rescored_count_ += 1;
      rescored_nll_ -= lp;
    }
  } else {
    if (!std::isnan(lp)) {
      tokens_scored_ += 1;
      nll_sum_ -= lp;
    }
    consumed_.push_back(id);
  }
  if (provisional) {
    tail_.push_back(id);
    tail_logprobs_.push_back(lp);
  }
}

void CallLedger::CountSegment(const CallOrigin& origin, int64_t start, absl::Span<const int32_t> ids,
                              absl::Span<const float> logprobs, bool provisional) {
  for (size_t i = 0; i < ids.size(); ++i) {
    CountToken(origin, start + static_cast<int64_t>(i), ids[i], logprobs[i], provisional);
  }
}

void CallLedger::RecordSelection(const engine::SegmentOutput& out, int64_t start, int n) {
  if (out.selections.empty()) return;
  SelectionRecord& rec = selection_.emplace();
  rec.segment_start = start;
  rec.segment_len = n;
  rec.recent_from = out.recent_from;
  rec.scores = out.selection_scores;
  rec.selected.assign(out.selections.size(), {});
  for (size_t l = 0; l < out.selections.size(); ++l) {
    rec.selected[l].resize(out.selections[l].size());
    for (size_t h = 0; h < out.selections[l].size(); ++h) {
      for (int idx : out.selections[l][h]) rec.selected[l][h].push_back(out.selection_base + idx);
    }
  }
}

CallOrigin Session::TakeTail(std::vector<int32_t>* tokens) const {
  CallOrigin origin{stream->position(), position(), tail_logprobs};
  tokens->insert(tokens->begin(), tail.begin(), tail.end());
  return origin;
}

void Session::Commit(CallLedger ledger) {
  ++version;
  tokens_scored += ledger.tokens_scored_ + ledger.rescored_count_;
  nll_sum += ledger.nll_sum_ + ledger.rescored_nll_;
  recent_ids.insert(recent_ids.end(), ledger.consumed_.begin(), ledger.consumed_.end());
  while (recent_ids.size() > recent_ids_kept) {
    recent_ids.pop_front();
    ++recent_first;
  }
  tail = std::move(ledger.tail_);
  tail_logprobs = std::move(ledger.tail_logprobs_);
  if (ledger.selection_) last_selection = std::move(*ledger.selection_);
}

std::optional<int32_t> Session::IdAt(int64_t position) const {
  const int64_t k = position - recent_first;
  if (k < 0 || k >= static_cast<int64_t>(recent_ids.size())) return std::nullopt;
  return recent_ids[static_cast<size_t>(k)];
}

}  // namespace trams::server
