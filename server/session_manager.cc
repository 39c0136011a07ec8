#include "server/session_manager.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/session_id.h"

namespace trams::server {
namespace {

constexpr size_t kMaxTombstones = 10000;

}  // namespace

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

SessionManager::SessionManager(engine::Engine* model, const SessionLimits& limits, int64_t input_buffer_budget_bytes,
                               Metrics* metrics)
    : model_(model), device_(model->device()), limits_(limits), metrics_(metrics),
      buffer_budget_(input_buffer_budget_bytes) {
  if (metrics_) metrics_->SetMemoryBudget(limits_.memory_budget_bytes);
  std::lock_guard<std::mutex> lock(mu_);
  PublishGauges();
  if (limits_.idle_ttl_seconds > 0) reaper_ = std::thread([this] { Reap(); });
}

SessionManager::~SessionManager() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  reaper_cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
}

void SessionManager::Reap() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!reaper_cv_.wait_for(lock, kReapEvery, [this] { return stopping_; })) {
    lock.unlock();
    const int n = ExpireIdle();
    if (n > 0) LogInfo("expired idle sessions", {{"count", std::to_string(n)}});
    lock.lock();
  }
}

absl::Status SessionManager::NotFound(const std::string& id) const {
  auto it = tombstones_.find(id);
  if (it != tombstones_.end()) {
    return absl::NotFoundError(absl::StrCat("session '", id, "' no longer exists: ", it->second));
  }
  return absl::NotFoundError(absl::StrCat("session '", id, "' does not exist"));
}

void SessionManager::Remove(std::shared_ptr<Session> s, const std::string& reason) {
  // `s` is a copy: the caller's reference may be the map entry erased below.
  if (s->state == SessionState::kIdle) idle_lru_.erase(s->lru);
  s->state = SessionState::kRemoved;
  bytes_in_use_ -= s->pool_bytes;
  pool_bytes_ -= s->pool_bytes;
  sessions_.erase(s->id);
  if (!reason.empty()) {
    tombstones_[s->id] = reason;
    tombstone_order_.push_back(s->id);
    if (tombstone_order_.size() > kMaxTombstones) {
      tombstones_.erase(tombstone_order_.front());
      tombstone_order_.pop_front();
    }
  }
  PublishGauges();
}

absl::Status SessionManager::MakeRoom(int64_t bytes, bool new_session) {
  const bool count_limited = new_session;
  auto fits = [&](int64_t in_use, size_t count) {
    return in_use + bytes <= limits_.memory_budget_bytes &&
           (!count_limited || static_cast<int64_t>(count) < limits_.max_sessions);
  };
  if (fits(bytes_in_use_, sessions_.size())) return absl::OkStatus();
  // Decide before evicting: find the fewest least-recently-used idle sessions whose removal makes the
  // request fit. If even all of them would not do, evict nobody (a request that cannot fit must not
  // wipe the idle sessions on its way to failing).
  size_t victims = 0;
  if (limits_.eviction == EvictionPolicy::kLeastRecentlyUsed) {
    int64_t in_use = bytes_in_use_;
    size_t count = sessions_.size();
    for (auto it = idle_lru_.begin(); it != idle_lru_.end() && !fits(in_use, count); ++it) {
      in_use -= sessions_.at(*it)->pool_bytes;
      --count;
      ++victims;
    }
    if (!fits(in_use, count)) victims = 0;
  }
  if (victims == 0) {
    if (bytes > limits_.memory_budget_bytes) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%d bytes needed, more than the whole memory budget of %d bytes: use a smaller mem_len", bytes,
          limits_.memory_budget_bytes));
    }
    if (new_session && static_cast<int64_t>(sessions_.size()) >= limits_.max_sessions &&
        bytes_in_use_ + bytes <= limits_.memory_budget_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("the server holds its maximum of ", limits_.max_sessions,
                                                       " sessions; delete one or retry later"));
    }
    return absl::ResourceExhaustedError(absl::StrFormat(
        "memory budget exhausted: %d bytes needed, %d of %d in use%s", bytes, bytes_in_use_,
        limits_.memory_budget_bytes,
        limits_.eviction == EvictionPolicy::kRefuse ? " (eviction is off)"
                                                    : ", and evicting every idle session would not make room"));
  }
  for (size_t i = 0; i < victims; ++i) {
    const std::string victim = idle_lru_.front();
    const bool for_memory = bytes_in_use_ + bytes > limits_.memory_budget_bytes;
    const char* why = for_memory ? "memory_budget" : "max_sessions";
    Remove(sessions_.at(victim), absl::StrCat("evicted (least recently used) to make room, reason ", why,
                                             ", at unix ms ", NowMs()));
    if (metrics_) metrics_->SessionEvicted(why);
  }
  return absl::OkStatus();
}

absl::StatusOr<SessionSnapshot> SessionManager::Create(std::string id, const engine::TramsSettings& memory, int segment_len) {
  // The request was checked (proto_convert.h); these guard the manager's own contract.
  if (memory.mem_len > limits_.max_mem_len || segment_len <= 0 || segment_len > limits_.max_segment_len) {
    return absl::InvalidArgumentError(absl::StrCat("mem_len ", memory.mem_len, " or segment_len ", segment_len,
                                                   " is outside this server's limits"));
  }
  absl::StatusOr<int64_t> bytes_or = model_->StreamBytes(memory);  // validates the settings
  if (!bytes_or.ok()) return bytes_or.status();
  const int64_t bytes = *bytes_or;
  std::lock_guard<std::mutex> lock(mu_);
  if (id.empty()) {
    static std::mt19937_64 rng(std::random_device{}());
    do {
      id = absl::StrFormat("s-%016x", rng());
    } while (sessions_.count(id));
  } else if (!IsValidSessionId(id)) {
    return InvalidSessionId(id);
  } else if (sessions_.count(id)) {
    return absl::AlreadyExistsError(absl::StrCat("session '", id, "' already exists"));
  }
  absl::Status room = MakeRoom(bytes, /*new_session=*/true);
  if (!room.ok()) return room;
  absl::StatusOr<std::unique_ptr<engine::EngineStream>> stream = model_->NewStream(memory);  // only after the check
  if (!stream.ok()) return stream.status();
  auto s = std::make_shared<Session>();
  s->id = id;
  s->stream = std::move(*stream);
  s->segment_len = segment_len;
  s->recent_ids_kept = static_cast<size_t>(s->stream->capacity()) + static_cast<size_t>(limits_.max_segment_len);
  s->created_ms = s->last_used_ms = NowMs();
  s->pool_bytes = s->stream->bytes();
  bytes_in_use_ += s->pool_bytes;
  pool_bytes_ += s->pool_bytes;
  idle_lru_.push_back(id);
  s->lru = std::prev(idle_lru_.end());
  sessions_[id] = s;
  tombstones_.erase(id);
  if (metrics_) metrics_->SessionCreated();
  PublishGauges();
  SessionSnapshot snap;
  snap.id = id;
  snap.memory = memory;
  snap.segment_len = segment_len;
  snap.pool_bytes = s->pool_bytes;
  snap.created_ms = snap.last_used_ms = s->created_ms;
  return snap;
}

namespace {
SessionSnapshot Snapshot(const Session& s) {
  SessionSnapshot snap;
  snap.id = s.id;
  snap.memory = s.stream->settings();
  snap.segment_len = s.segment_len;
  snap.pool_bytes = s.pool_bytes;
  snap.created_ms = s.created_ms;
  snap.last_used_ms = s.last_used_ms;
  snap.state = s.state;
  snap.busy = s.held();
  // A running call owns the stream and counters: report what the last call left.
  snap.position = s.committed.position;
  snap.pool_tokens = s.committed.pool_tokens;
  snap.tokens_scored = s.committed.tokens_scored;
  snap.nll_sum = s.committed.nll_sum;
  return snap;
}
}  // namespace

absl::StatusOr<SessionSnapshot> SessionManager::Get(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return NotFound(id);
  return Snapshot(*it->second);
}

std::vector<SessionSnapshot> SessionManager::List() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<SessionSnapshot> out;
  for (const auto& [id, s] : sessions_) out.push_back(Snapshot(*s));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

void SessionManager::Delete(const std::string& id, std::shared_ptr<DeleteRequest> request) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    absl::Status missing = NotFound(id);
    lock.unlock();
    return request->Answer(missing);
  }
  std::shared_ptr<Session> s = it->second;
  if (!s->held()) {
    Remove(s, "");
    lock.unlock();
    return request->Answer(absl::OkStatus());
  }
  // Delete right after the holder (a client cancel may still be on its way, or unwinding), ahead of any
  // queued calls (they then find the session gone).
  auto ready = [this, request](absl::StatusOr<std::shared_ptr<Session>> taken) {
    if (!taken.ok()) return request->Answer(taken.status());
    if (!request->Claim()) return Release(*taken);  // answered (gave up) meanwhile: leave the session be
    {
      std::lock_guard<std::mutex> guard(mu_);
      Remove(*taken, "");
    }
    Release(*taken);
    request->done(absl::OkStatus());
  };
  s->state = SessionState::kDraining;  // until the holder lets go (the request may give up meanwhile)
  s->waiters.push_front({std::move(ready), /*reserve_undo=*/false});
}

absl::Status SessionManager::HeldError(const std::string& id) {
  return absl::FailedPreconditionError(
      absl::StrCat("session '", id, "' has a call running; delete it when the call ends (or cancel the call)"));
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Take(const std::shared_ptr<Session>& s, bool reserve_undo) {
  if (s->state == SessionState::kRemoved) return NotFound(s->id);
  // A call may overwrite every live pool row: reserve room for its undo log first.
  const int64_t undo = reserve_undo ? s->pool_bytes : 0;
  idle_lru_.erase(s->lru);  // it is idle here (Acquire, or Release's hand-over)
  s->state = SessionState::kRunning;  // off the eviction list while making room
  absl::Status room = MakeRoom(undo, /*new_session=*/false);
  if (!room.ok()) {
    s->state = SessionState::kIdle;
    idle_lru_.push_back(s->id);
    s->lru = std::prev(idle_lru_.end());
    return room;
  }
  bytes_in_use_ += undo;
  s->undo_reserved = undo;
  s->last_used_ms = NowMs();
  PublishGauges();
  return s;
}

void SessionManager::Acquire(const std::string& id, ReadyFn ready, bool reserve_undo) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  absl::StatusOr<std::shared_ptr<Session>> result = absl::UnknownError("");
  if (it == sessions_.end()) {
    result = NotFound(id);
  } else if (it->second->held()) {
    it->second->waiters.push_back({std::move(ready), reserve_undo});  // calls on one session run in order
    return;
  } else {
    result = Take(it->second, reserve_undo);
  }
  lock.unlock();
  ready(std::move(result));  // may start the call at once: never under the lock
}

void SessionManager::Release(const std::shared_ptr<Session>& s) {
  // The releasing call still owns the stream and counters here: publish them for Get/List.
  const Session::Committed committed{s->position(), s->stream->size(), s->tokens_scored, s->nll_sum};
  std::unique_lock<std::mutex> lock(mu_);
  s->committed = committed;
  bytes_in_use_ -= s->undo_reserved;
  s->undo_reserved = 0;
  s->last_used_ms = NowMs();
  if (s->state != SessionState::kRemoved) {
    s->state = SessionState::kIdle;
    idle_lru_.push_back(s->id);
    s->lru = std::prev(idle_lru_.end());
  }
  PublishGauges();
  while (!s->waiters.empty()) {
    Session::Waiter next = std::move(s->waiters.front());
    s->waiters.pop_front();
    absl::StatusOr<std::shared_ptr<Session>> r = Take(s, next.reserve_undo);
    const bool taken = r.ok();
    lock.unlock();
    next.ready(std::move(r));
    if (taken) return;  // the next call owns the session (and its remaining waiters)
    lock.lock();
  }
}

absl::Status SessionManager::ChargeBuffers(int64_t delta) {
  std::lock_guard<std::mutex> lock(mu_);
  if (delta > 0 && buffer_bytes_ + delta > buffer_budget_) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "input buffers exhausted: this call needs %d bytes more, %d of %d in use by all calls; send smaller "
        "chunks or retry later",
        delta, buffer_bytes_, buffer_budget_));
  }
  buffer_bytes_ += delta;
  if (metrics_) metrics_->SetInputBufferBytes(buffer_bytes_);
  return absl::OkStatus();
}

int SessionManager::ExpireIdle() {
  if (limits_.idle_ttl_seconds <= 0) return 0;
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t cutoff = NowMs() - int64_t{1000} * limits_.idle_ttl_seconds;
  int expired = 0;
  while (!idle_lru_.empty()) {
    auto s = sessions_.at(idle_lru_.front());
    if (s->last_used_ms > cutoff) break;
    Remove(s, absl::StrCat("expired after ", limits_.idle_ttl_seconds, " s idle, at unix ms ", NowMs()));
    if (metrics_) metrics_->SessionEvicted("idle_ttl");
    ++expired;
  }
  return expired;
}

int64_t SessionManager::bytes_in_use() {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_in_use_;
}

void SessionManager::PublishGauges() {
  if (metrics_) {
    metrics_->SetSessions(static_cast<int64_t>(sessions_.size()), bytes_in_use_);
    metrics_->SetPoolBytes(device_, pool_bytes_);
    metrics_->SetSessionsResident(device_, static_cast<int64_t>(sessions_.size()));
  }
}

}  // namespace trams::server
