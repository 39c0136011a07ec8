// Sessions: id -> Session, with a byte-exact memory budget checked before anything is allocated, LRU
// eviction or refusal, idle expiry (the manager's own reaper thread, in every server), and one call at a
// time per session (later calls wait their turn, in order). Thread-safe.
//
// Ownership: a Session's `stream` and call state are touched only by the call that holds the session
// (Acquire .. Release); everything else is guarded by the manager's mutex.
//
// Every id here is a scoped id (server/session_id.h: "TENANT+ID" with --auth_keys, the bare id without);
// the protocol layer scopes what clients send and strips what they get back.
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
#include "absl/strings/string_view.h"
#include "engine/engine.h"
#include "server/auth_keys.h"
#include "server/server_options.h"
#include "server/session.h"
#include "server/session_snapshot.h"
#include "server/snapshot_writer.h"

namespace trams::server {

class Metrics;

// Snapshots and the state store (server/README.md, "Persistence").
struct SessionPersistence {
  SnapshotIdentity identity;  // what every snapshot of this server says it was made by
  engine::SnapshotCompression compression = engine::SnapshotCompression::kNone;
  // null: sessions live in memory only (eviction and expiry drop them). Otherwise a session that leaves
  // memory for any reason but DeleteSession is written here first (spilled) and restored on its next use.
  SessionStore* store = nullptr;
  int snapshot_interval_seconds = 0;  // > 0 (with a store): sessions changed since are written this often
};

class SessionManager {
 public:
  // `model` holds the pools; on a backend with an arena the budget is also capped at the arena.
  SessionManager(engine::Engine* model, const SessionLimits& limits, int64_t input_buffer_budget_bytes,
                 Metrics* metrics, SessionPersistence persistence = {});
  ~SessionManager();  // stops the reaper, then writes what the snapshot writer still holds

  // Per-tenant quotas of sessions and pool bytes (--auth_keys). A tenant's new session, restore or call
  // makes room by evicting (or spilling) only that tenant's own idle sessions, never another's.
  void SetTenantQuotas(const std::map<std::string, TenantQuota>& quotas);

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

  // Evicts (with a store: spills) sessions idle longer than the TTL; returns how many. The reaper does it
  // every kReapEvery.
  int ExpireIdle();

  // Adds a whole session (ImportSession, ForkSession, a restore). An empty id: the snapshot's own. An id in
  // use is ALREADY_EXISTS unless `replace` (then an idle session of that id is replaced, a held one is
  // FAILED_PRECONDITION). Budget and limits as Create; on any error nothing changed.
  absl::StatusOr<SessionSnapshot> Insert(SessionImage image, const std::string& id, bool replace);
  // The session's image, taken like a call (after the running one) without an undo reservation.
  using ImageFn = std::function<void(absl::StatusOr<SessionImage>)>;
  void ExportImage(const std::string& id, ImageFn done);
  // A new session `new_id` (empty: the server picks) that starts as an exact copy of `id`.
  using SnapshotFn = std::function<void(absl::StatusOr<SessionSnapshot>)>;
  void Fork(const std::string& id, std::string new_id, SnapshotFn done);
  absl::StatusOr<std::string> EncodeImage(const SessionImage& image) const;
  absl::StatusOr<SessionImage> DecodeImage(absl::string_view blob) const;

  // With a store: queues every session changed since its last snapshot (`trigger`: interval, drain);
  // returns how many. SaveAll also waits up to `deadline` for the writes (false in `*flushed` if not done).
  int SnapshotChanged(const char* trigger);
  int SaveAll(std::chrono::milliseconds deadline, bool* flushed);
  bool has_store() const { return writer_ != nullptr; }
  static constexpr std::chrono::milliseconds kReapEvery{1000};
  int64_t bytes_in_use();

 private:
  absl::Status NotFound(const std::string& id) const;            // mu_ held
  // A restored session taken for a call in the same step as it enters the map.
  struct Taken {
    bool reserve_undo = false;
    std::shared_ptr<Session> session;
  };
  // Brings `id` back from the writer's queue or the store (mu_ not held), taken for `take` when given;
  // NotFound when neither has it, ALREADY_EXISTS when another call brought it back meanwhile.
  absl::StatusOr<SessionSnapshot> Restore(const std::string& id, Taken* take);
  static constexpr int kRestoreAttempts = 4;
  absl::StatusOr<std::shared_ptr<SessionImage>> ImageOf(const Session& s);  // mu_ held, s not used by a call
  // A random id in the tenant of `scoped` (mu_ held).
  std::string NewId(absl::string_view scoped);
  // With a store: ALREADY_EXISTS if it holds `id`, else claims it (a shared store). mu_ not held.
  absl::Status ClaimNew(const std::string& id);
  absl::StatusOr<SessionSnapshot> Insert(SessionImage image, const std::string& id, bool replace, bool from_store,
                                         Taken* take);
  void RenewLeases();  // the reaper, with a shared store: drops what another replica took over
  // Spills (with a store) or evicts an idle session; `reason` for the tombstone, `metric` its label.
  void LeaveMemory(const std::shared_ptr<Session>& s, const std::string& reason, const char* metric);  // mu_ held

 public:
  static absl::Status HeldError(const std::string& id);  // FAILED_PRECONDITION: a call holds the session

 private:
  // Room for `bytes` more in the budget (a new session's pool, or a call's undo log: `pool` false), for
  // the tenant of `id`, evicting its least recently used idle sessions if that suffices; `freed` bytes of
  // the tenant's go at the same time (a replaced session). mu_ held.
  absl::Status MakeRoom(int64_t bytes, bool new_session, const std::string& id, bool pool = true, int64_t freed = 0);
  void Admit(const std::shared_ptr<Session>& s);  // a new idle session into the map, budget and LRU; mu_ held
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
  struct TenantUsage {
    int64_t sessions = 0;
    int64_t pool_bytes = 0;
  };
  std::map<std::string, TenantQuota, std::less<>> quotas_;
  std::map<std::string, TenantUsage, std::less<>> usage_;  // tenants with sessions in memory
  int64_t bytes_in_use_ = 0;   // pools + undo reservations
  int64_t pool_bytes_ = 0;     // pools only
  const int64_t buffer_budget_;
  int64_t buffer_bytes_ = 0;   // calls' input buffers
  uint64_t next_id_ = 1;
  const SessionPersistence persistence_;
  std::unique_ptr<SnapshotWriter> writer_;  // with a store
  std::thread reaper_;  // with an idle TTL or a snapshot interval
  std::condition_variable reaper_cv_;
  bool stopping_ = false;  // mu_
};

int64_t NowMs();

}  // namespace trams::server
