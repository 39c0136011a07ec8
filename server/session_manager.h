// Sessions: id -> memory pool and counters, with a byte-exact memory budget checked before anything
// is allocated, LRU eviction or refusal, idle expiry, and one call at a time per session (later calls
// wait their turn, in order). Thread-safe.
//
// Ownership: a Session's `stream` and call state are touched only by the call that holds the session
// (Acquire .. Release); everything else is guarded by the manager's mutex.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "server/server_options.h"

namespace trams::server {

class Metrics;

// What the last segment attended (for ExplainSelection), in stream positions.
struct SelectionRecord {
  int64_t segment_start = -1;
  int segment_len = 0;
  int64_t recent_from = 0;
  // [layer][head] -> stream positions of the selected tokens (empty: that layer did not select).
  std::vector<std::vector<std::vector<int64_t>>> selected;
  std::vector<std::vector<std::vector<float>>> scores;  // their TRAMS scores when selected
};

struct Session {
  std::string id;
  std::unique_ptr<engine::EngineStream> stream;
  // Tokens past the pool's last segment boundary (an incomplete segment): consumed by the session but
  // run only provisionally; the next call runs them again, with its own tokens, as a whole segment.
  std::vector<int32_t> tail;
  std::vector<float> tail_logprobs;  // what was reported for them (NaN: none)
  int64_t position() const { return stream->position() + static_cast<int64_t>(tail.size()); }
  int segment_len = 0;
  int64_t created_ms = 0;
  int64_t last_used_ms = 0;
  int64_t tokens_scored = 0;
  double nll_sum = 0;
  // Ids of the newest tokens, for explanations: recent_ids[i] is at position recent_first + i.
  std::deque<int32_t> recent_ids;
  int64_t recent_first = 0;
  SelectionRecord last_selection;

  // Guarded by the manager.
  struct Committed {  // the state as of the last call's end, for Get/List while a call runs
    int64_t position = 0;
    int pool_tokens = 0;
    int64_t tokens_scored = 0;
    double nll_sum = 0;
  } committed;
  bool busy = false;
  bool removed = false;
  int64_t pool_bytes = 0;
  int64_t undo_reserved = 0;
  struct Waiter {
    std::function<void(absl::StatusOr<std::shared_ptr<Session>>)> ready;
    bool reserve_undo;
  };
  std::deque<Waiter> waiters;  // calls queued behind the running one
  std::list<std::string>::iterator lru;  // position in the idle list (valid when !busy)
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
  bool busy = false;
};

class SessionManager {
 public:
  // `model` holds the pools; on a backend with an arena the budget is also capped at the arena.
  SessionManager(engine::Engine* model, const SessionLimits& limits, int64_t input_buffer_budget_bytes,
                 Metrics* metrics);

  absl::StatusOr<SessionSnapshot> Create(std::string id, const engine::TramsSettings& memory, int segment_len);
  absl::StatusOr<SessionSnapshot> Get(const std::string& id);
  std::vector<SessionSnapshot> List();
  // One DeleteSession call: answered exactly once, by whichever comes first (the deletion, or the
  // caller giving up on a session that stays held).
  struct DeleteRequest {
    std::function<void(absl::Status)> done;
    std::atomic<bool> answered{false};
    bool Claim() { return !answered.exchange(true); }
    void Answer(const absl::Status& s) {
      if (Claim()) done(s);
    }
  };
  // Deletes the session and answers (at once, or on the releasing thread). A session held by a call is
  // deleted as soon as that call lets go, ahead of queued calls, unless the request was answered
  // (given up) meanwhile.
  void Delete(const std::string& id, std::shared_ptr<DeleteRequest> request);

  // Takes the session for one call. `ready` runs once the session is free (at once, or later on the
  // releasing thread) with the session or an error (NOT_FOUND, evicted, RESOURCE_EXHAUSTED for the undo
  // reservation). The call must Release() what it acquired.
  using ReadyFn = std::function<void(absl::StatusOr<std::shared_ptr<Session>>)>;
  void Acquire(const std::string& id, ReadyFn ready, bool reserve_undo = true);
  void Release(const std::shared_ptr<Session>& session);

  // Counts a call's input buffers (text and ids not yet run) in the input-buffer budget: `delta` bytes
  // more (or fewer). RESOURCE_EXHAUSTED, and nothing counted, if they do not fit; never evicts for them.
  absl::Status ChargeBuffers(int64_t delta);

  // Evicts sessions idle longer than the TTL; returns how many.
  int ExpireIdle();
  int64_t bytes_in_use();

 private:
  absl::Status NotFound(const std::string& id) const;            // mu_ held

 public:
  static absl::Status HeldError(const std::string& id);  // FAILED_PRECONDITION: a call holds the session

 private:
  absl::Status MakeRoom(int64_t bytes, bool new_session);        // mu_ held
  void Remove(std::shared_ptr<Session> s, const std::string& reason);  // mu_ held
  absl::StatusOr<std::shared_ptr<Session>> Take(const std::shared_ptr<Session>& s, bool reserve_undo);  // mu_ held
  void PublishGauges();                                          // mu_ held

  engine::Engine* model_;
  const std::string device_;  // the pools' place, the metrics' label
  SessionLimits limits_;
  Metrics* metrics_;
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Session>> sessions_;
  std::list<std::string> idle_lru_;  // idle sessions, least recently used first
  std::map<std::string, std::string> tombstones_;  // evicted id -> why (bounded)
  std::deque<std::string> tombstone_order_;
  int64_t bytes_in_use_ = 0;   // pools + undo reservations
  int64_t pool_bytes_ = 0;     // pools only
  const int64_t buffer_budget_;
  int64_t buffer_bytes_ = 0;   // calls' input buffers
  uint64_t next_id_ = 1;
};

int64_t NowMs();
// Session ids are 1-128 characters from [A-Za-z0-9._:-]; the error quotes a bad one safely.
bool IsValidSessionId(const std::string& id);
absl::Status InvalidSessionId(const std::string& id);

}  // namespace trams::server
