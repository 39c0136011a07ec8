// Sessions: id -> Session, with a byte-exact memory budget checked before anything is allocated, LRU
// eviction or refusal, idle expiry (the manager's own reaper thread, in every server), and one call at a
// time per session (later calls wait their turn, in order). Thread-safe.
//
// Ownership: a Session's `stream` and call state are touched only by the call that holds the session
// (Acquire .. Release); everything else is guarded by the manager's mutex.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "server/server_options.h"
#include "server/session.h"

namespace trams::server {

class Metrics;

class SessionManager {
 public:
  // `model` holds the pools; on a backend with an arena the budget is also capped at the arena.
  SessionManager(engine::Engine* model, const SessionLimits& limits, int64_t input_buffer_budget_bytes,
                 Metrics* metrics);
  ~SessionManager();  // stops the reaper

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

  // Evicts sessions idle longer than the TTL; returns how many. The reaper does it every kReapEvery.
  int ExpireIdle();
  static constexpr std::chrono::milliseconds kReapEvery{1000};
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
  void Reap();                                                   // the reaper thread

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
  std::thread reaper_;  // only with an idle TTL
  std::condition_variable reaper_cv_;
  bool stopping_ = false;  // mu_
};

int64_t NowMs();

}  // namespace trams::server
