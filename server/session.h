// One session: its engine stream, the provisional tail, its totals, what its last segment selected, and its
// state. A call that holds the session (SessionManager::Acquire .. Release) builds a CallLedger and
// applies it with Session::Commit only when the call ends OK; a failed call leaves the session as it was.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/engine.h"

namespace trams::server {

enum class SessionState {
  kIdle,      // no call holds it: on the LRU list, may be evicted or expire
  kRunning,   // a call holds it; later calls wait their turn, in order
  kDraining,  // a call holds it and a DeleteSession waits for that call to end
  kRemoved,   // deleted, evicted or expired: a call still holding it finishes, nobody takes it again
};
std::string_view SessionStateName(SessionState state);

// What the last segment attended (for ExplainSelection), in stream positions.
struct SelectionRecord {
  int64_t segment_start = -1;
  int segment_len = 0;
  int64_t recent_from = 0;
  // [layer][head] -> stream positions of the selected tokens (empty: that layer did not select).
  std::vector<std::vector<std::vector<int64_t>>> selected;
  std::vector<std::vector<std::vector<float>>> scores;  // their TRAMS scores when selected
};

// Where a call stands against its session's provisional tail (fixed when the call takes the session).
struct CallOrigin {
  int64_t boundary = 0;              // the pool's position: the tail's first position
  int64_t call_start = 0;            // the first position this call sends (boundary + tail size)
  std::vector<float> tail_logprobs;  // what was reported for the tail
};

// Totals and bookkeeping of one call; Session::Commit applies them.
class CallLedger {
 public:
  // One answered token at `position` (log-prob `lp`, NaN: none). Positions before origin.call_start are
  // the earlier call's provisional tail answered again: their new values replace the old in the totals.
  void CountToken(const CallOrigin& origin, int64_t position, int32_t id, float lp, bool provisional);
  // CountToken for each token of a segment from `start` (logprobs as the engine reports them).
  void CountSegment(const CallOrigin& origin, int64_t start, absl::Span<const int32_t> ids,
                    absl::Span<const float> logprobs, bool provisional);
  // What the segment of `n` tokens from `start` selected (the engine's positions), when it reports any.
  void RecordSelection(const engine::SegmentOutput& out, int64_t start, int n);

  int64_t tokens_scored() const { return tokens_scored_; }  // over the tokens this call sent
  double nll_sum() const { return nll_sum_; }

 private:
  friend struct Session;
  int64_t tokens_scored_ = 0;
  double nll_sum_ = 0;
  int64_t rescored_count_ = 0;  // the tail's tokens answered again: new values minus the old
  double rescored_nll_ = 0;
  std::vector<int32_t> consumed_;  // the tokens this call sent
  std::vector<int32_t> tail_;      // the session's provisional tail once the call commits
  std::vector<float> tail_logprobs_;
  std::optional<SelectionRecord> selection_;
};

struct Session {
  std::string id;
  std::unique_ptr<engine::EngineStream> stream;
  int segment_len = 0;
  int64_t created_ms = 0;
  int64_t last_used_ms = 0;

  // Held by the call (Acquire .. Release).
  // Tokens past the pool's last segment boundary (an incomplete segment): consumed by the session but
  // run only provisionally; the next call runs them again, with its own tokens, as a whole segment.
  std::vector<int32_t> tail;
  std::vector<float> tail_logprobs;  // what was reported for them (NaN: none)
  int64_t tokens_scored = 0;
  double nll_sum = 0;
  // Ids of the newest tokens, for explanations: recent_ids[i] is at position recent_first + i; at most
  // recent_ids_kept (the pool's capacity plus one segment).
  std::deque<int32_t> recent_ids;
  int64_t recent_first = 0;
  size_t recent_ids_kept = 0;
  SelectionRecord last_selection;
  // Bumped by every Commit; a snapshot is current while saved_version equals it (guarded by the manager).
  uint64_t version = 0;
  uint64_t saved_version = 0;

  int64_t position() const { return stream->position() + static_cast<int64_t>(tail.size()); }
  // Puts the provisional tail before a call's own tokens and says where the call starts.
  CallOrigin TakeTail(std::vector<int32_t>* tokens) const;
  // Applies a call that ended OK.
  void Commit(CallLedger ledger);
  // The id at `position`, if it is still kept.
  std::optional<int32_t> IdAt(int64_t position) const;

  // Guarded by the manager.
  SessionState state = SessionState::kIdle;
  bool held() const { return state == SessionState::kRunning || state == SessionState::kDraining; }
  struct Committed {  // the state as of the last call's end, for Get/List while a call runs
    int64_t position = 0;
    int pool_tokens = 0;
    int64_t tokens_scored = 0;
    double nll_sum = 0;
  } committed;
  int64_t pool_bytes = 0;
  int64_t undo_reserved = 0;
  struct Waiter {
    std::function<void(absl::StatusOr<std::shared_ptr<Session>>)> ready;
    bool reserve_undo;
  };
  std::deque<Waiter> waiters;            // calls queued behind the running one
  std::list<std::string>::iterator lru;  // position in the idle list (valid while idle)
};

struct SessionSnapshot {  // a consistent copy for Get/List
  std::string id;
  engine::TramsSettings memory;
  int segment_len = 0;
  int64_t position = 0;
  int pool_tokens = 0;
  int64_t pool_bytes = 0;
  int64_t created_ms = 0;
  int64_t last_used_ms = 0;
  int64_t tokens_scored = 0;
  double nll_sum = 0;
  SessionState state = SessionState::kIdle;
  bool busy = false;  // a call holds it (running or draining)
};

}  // namespace trams::server
