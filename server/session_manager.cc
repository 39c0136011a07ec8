#include "server/session_manager.h"


#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/session_id.h"

namespace trams::server {
namespace {

constexpr size_t kMaxTombstones = 10000;
// What decoding a snapshot may allocate beyond the memory budget (the tail, ids, metadata).
constexpr uint64_t kSnapshotSlackBytes = uint64_t{64} << 20;

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

SessionManager::SessionManager(engine::Engine* model, const SessionLimits& limits, int64_t input_buffer_budget_bytes,
                               Metrics* metrics, SessionPersistence persistence)
    : model_(model), device_(model->device()), limits_(limits), metrics_(metrics),
      buffer_budget_(input_buffer_budget_bytes), persistence_(std::move(persistence)) {
  if (metrics_) metrics_->SetMemoryBudget(limits_.memory_budget_bytes);
  if (persistence_.store != nullptr) {
    writer_ = std::make_unique<SnapshotWriter>(persistence_.store, persistence_.identity, persistence_.compression,
                                               metrics_);
  }
  std::lock_guard<std::mutex> lock(mu_);
  PublishGauges();
  if (limits_.idle_ttl_seconds > 0 ||
      (writer_ && (persistence_.snapshot_interval_seconds > 0 || persistence_.store->shared()))) {
    reaper_ = std::thread([this] { Reap(); });
  }
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
  const auto interval = std::chrono::seconds(persistence_.snapshot_interval_seconds);
  auto last_snapshot = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  while (!reaper_cv_.wait_for(lock, kReapEvery, [this] { return stopping_; })) {
    lock.unlock();
    const int n = ExpireIdle();
    if (n > 0) LogInfo("expired idle sessions", {{"count", std::to_string(n)}});
    if (writer_ && interval.count() > 0 && std::chrono::steady_clock::now() - last_snapshot >= interval) {
      last_snapshot = std::chrono::steady_clock::now();
      SnapshotChanged("interval");
    }
    if (writer_ && persistence_.store->shared()) RenewLeases();
    lock.lock();
  }
}

void SessionManager::RenewLeases() {
  std::vector<std::string> ids;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, s] : sessions_) ids.push_back(id);
  }
  const std::vector<std::string> lost = persistence_.store->Renew(ids);
  std::lock_guard<std::mutex> lock(mu_);
  for (const std::string& id : lost) {
    auto it = sessions_.find(id);
    if (it == sessions_.end() || it->second->held()) continue;  // a held one goes once its call ends
    LogError("another replica took a session over: dropping this replica's copy", {{"session", id}});
    Remove(it->second, "taken over by another replica after this replica's lease lapsed");
  }
}

absl::Status SessionManager::ClaimNew(const std::string& id) {
  if (!writer_ || BareSessionId(id).empty()) return absl::OkStatus();
  if (const SnapshotWriter::Pending p = writer_->Find(id); p.queued) {  // on its way to the store
    if (p.image != nullptr) return absl::AlreadyExistsError(absl::StrCat(SessionRef(id), " already exists (spilled)"));
    return persistence_.store->Claim(id);  // being deleted: the id is free
  }
  absl::StatusOr<bool> stored = persistence_.store->Contains(id);
  if (!stored.ok()) return absl::UnavailableError(absl::StrCat("the state store failed: ", stored.status().message()));
  if (*stored) {
    return absl::AlreadyExistsError(absl::StrCat(SessionRef(id), " already exists (in the state store)"));
  }
  return persistence_.store->Claim(id);
}

std::string SessionManager::NewId(absl::string_view scoped) {
  const absl::string_view tenant = TenantOfSessionId(scoped);
  std::string id;
  do {
    id = ScopedSessionId(tenant, RandomSessionId());
  } while (sessions_.count(id));
  return id;
}

absl::StatusOr<std::shared_ptr<SessionImage>> SessionManager::ImageOf(const Session& s) {
  absl::StatusOr<engine::StreamImage> stream = model_->ExportStream(*s.stream);
  if (!stream.ok()) return stream.status();
  auto image = std::make_shared<SessionImage>();
  image->record = RecordOf(s);
  image->image = *std::move(stream);
  return image;
}

void SessionManager::LeaveMemory(const std::shared_ptr<Session>& s, const std::string& reason, const char* metric) {
  if (writer_) {
    absl::StatusOr<std::shared_ptr<SessionImage>> image = ImageOf(*s);
    if (image.ok()) {
      writer_->Put(s->id, *std::move(image), "spill");
      LogInfo("spilled a session to the store", {{"session", s->id}, {"reason", metric}});
      Remove(s, "");
      if (metrics_) metrics_->SessionSpilled();
      return;
    }
    LogError("spilling a session failed: evicting it", {{"session", s->id}, {"error", std::string(image.status().message())}});
  }
  LogInfo("evicted a session", {{"session", s->id}, {"reason", metric}});
  Remove(s, reason);
  if (metrics_) metrics_->SessionEvicted(metric);
}

absl::Status SessionManager::NotFound(const std::string& id) const {
  auto it = tombstones_.find(id);
  if (it != tombstones_.end()) {
    return absl::NotFoundError(absl::StrCat(SessionRef(id), " no longer exists: ", it->second));
  }
  return absl::NotFoundError(absl::StrCat(SessionRef(id), " does not exist"));
}

void SessionManager::Admit(const std::shared_ptr<Session>& s) {
  s->pool_bytes = s->stream->bytes();
  bytes_in_use_ += s->pool_bytes;
  pool_bytes_ += s->pool_bytes;
  TenantUsage& use = usage_[std::string(TenantOfSessionId(s->id))];
  ++use.sessions;
  use.pool_bytes += s->pool_bytes;
  idle_lru_.push_back(s->id);
  s->lru = std::prev(idle_lru_.end());
  sessions_[s->id] = s;
  tombstones_.erase(s->id);
  PublishGauges();
}

void SessionManager::Remove(std::shared_ptr<Session> s, const std::string& reason) {
  // `s` is a copy: the caller's reference may be the map entry erased below.
  if (s->state == SessionState::kIdle) idle_lru_.erase(s->lru);
  s->state = SessionState::kRemoved;
  bytes_in_use_ -= s->pool_bytes;
  pool_bytes_ -= s->pool_bytes;
  if (auto use = usage_.find(TenantOfSessionId(s->id)); use != usage_.end()) {
    use->second.pool_bytes -= s->pool_bytes;
    if (--use->second.sessions == 0) usage_.erase(use);
  }
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

absl::Status SessionManager::MakeRoom(int64_t bytes, bool new_session, const std::string& id, bool pool,
                                      int64_t freed) {
  const absl::string_view tenant = TenantOfSessionId(id);
  TenantQuota quota;
  if (auto q = quotas_.find(tenant); q != quotas_.end()) quota = q->second;
  TenantUsage use;
  if (auto u = usage_.find(tenant); u != usage_.end()) use = u->second;
  const int64_t grow = pool ? bytes : 0;
  struct Held {
    int64_t in_use, count, tenant_bytes, tenant_count;
  };
  auto server_fits = [&](const Held& h) {
    return h.in_use + bytes <= limits_.memory_budget_bytes && (!new_session || h.count < limits_.max_sessions);
  };
  auto quota_fits = [&](const Held& h) {
    return (grow == 0 || quota.max_pool_bytes == 0 || h.tenant_bytes + grow <= quota.max_pool_bytes) &&
           (!new_session || quota.max_sessions == 0 || h.tenant_count < quota.max_sessions);
  };
  Held held{bytes_in_use_ - freed, static_cast<int64_t>(sessions_.size()), use.pool_bytes - freed, use.sessions};
  if (server_fits(held) && quota_fits(held)) return absl::OkStatus();
  // Decide before evicting: find the fewest least-recently-used idle sessions of the caller's tenant whose
  // removal makes the request fit. If even all of them would not do, evict nobody (a request that cannot
  // fit must not wipe the idle sessions on its way to failing). Other tenants' sessions are never taken.
  std::vector<std::string> victims;
  if (limits_.eviction == EvictionPolicy::kLeastRecentlyUsed) {
    for (auto it = idle_lru_.begin(); it != idle_lru_.end() && !(server_fits(held) && quota_fits(held)); ++it) {
      if (TenantOfSessionId(*it) != tenant) continue;
      const int64_t b = sessions_.at(*it)->pool_bytes;
      held = {held.in_use - b, held.count - 1, held.tenant_bytes - b, held.tenant_count - 1};
      victims.push_back(*it);
    }
  }
  if (!(server_fits(held) && quota_fits(held))) {
    if (bytes > limits_.memory_budget_bytes) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%d bytes needed, more than the whole memory budget of %d bytes: use a smaller mem_len", bytes,
          limits_.memory_budget_bytes));
    }
    if (!quota_fits(held)) {
      const bool bytes_quota = grow > 0 && quota.max_pool_bytes > 0 && held.tenant_bytes + grow > quota.max_pool_bytes;
      if (metrics_) metrics_->QuotaRefused(std::string(tenant), bytes_quota ? "max_pool_bytes" : "max_sessions");
      if (bytes_quota) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "tenant '%s' holds %d pool bytes in sessions; %d more would pass its quota max_pool_bytes=%d (its idle "
            "sessions would not make room): delete one of its sessions or use a smaller mem_len",
            tenant, use.pool_bytes, grow, quota.max_pool_bytes));
      }
      return absl::ResourceExhaustedError(absl::StrCat("tenant '", tenant, "' holds its quota of max_sessions=",
                                                       quota.max_sessions, " sessions, none of them idle",
                                                       limits_.eviction == EvictionPolicy::kRefuse ? " (eviction is off)" : "",
                                                       ": delete one or retry later"));
    }
    if (new_session && static_cast<int64_t>(sessions_.size()) >= limits_.max_sessions &&
        bytes_in_use_ + bytes <= limits_.memory_budget_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("the server holds its maximum of ", limits_.max_sessions,
                                                       " sessions; delete one or retry later"));
    }
    if (!tenant.empty()) {  // the server's totals are other tenants' business
      return absl::ResourceExhaustedError(absl::StrFormat(
          "memory budget exhausted: %d bytes needed, and only the caller's own idle sessions are evicted for it%s",
          bytes, limits_.eviction == EvictionPolicy::kRefuse ? " (eviction is off)" : ""));
    }
    return absl::ResourceExhaustedError(absl::StrFormat(
        "memory budget exhausted: %d bytes needed, %d of %d in use%s", bytes, bytes_in_use_,
        limits_.memory_budget_bytes,
        limits_.eviction == EvictionPolicy::kRefuse ? " (eviction is off)"
                                                    : ", and evicting every idle session would not make room"));
  }
  for (const std::string& victim : victims) {
    const bool for_memory = bytes_in_use_ - freed + bytes > limits_.memory_budget_bytes;
    const bool for_count = new_session && static_cast<int64_t>(sessions_.size()) >= limits_.max_sessions;
    const char* why = for_memory ? "memory_budget" : for_count ? "max_sessions" : "tenant_quota";
    LeaveMemory(sessions_.at(victim),
                absl::StrCat("evicted (least recently used) to make room, reason ", why, ", at unix ms ", NowMs()), why);
  }
  return absl::OkStatus();
}

void SessionManager::SetTenantQuotas(const std::map<std::string, TenantQuota>& quotas) {
  std::lock_guard<std::mutex> lock(mu_);
  quotas_.clear();
  quotas_.insert(quotas.begin(), quotas.end());
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
  if (!BareSessionId(id).empty() && !IsValidScopedSessionId(id)) return InvalidSessionId(std::string(BareSessionId(id)));
  if (absl::Status claimed = ClaimNew(id); !claimed.ok()) {
    if (absl::IsAlreadyExists(claimed)) {
      std::lock_guard<std::mutex> lock(mu_);
      if (sessions_.count(id)) return absl::AlreadyExistsError(absl::StrCat(SessionRef(id), " already exists"));
    }
    return claimed;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (BareSessionId(id).empty()) {
    id = NewId(id);
  } else if (sessions_.count(id)) {
    return absl::AlreadyExistsError(absl::StrCat(SessionRef(id), " already exists"));
  }
  absl::Status room = MakeRoom(bytes, /*new_session=*/true, id);
  if (!room.ok()) return room;
  absl::StatusOr<std::unique_ptr<engine::EngineStream>> stream = model_->NewStream(memory);  // only after the check
  if (!stream.ok()) return stream.status();
  auto s = std::make_shared<Session>();
  s->id = id;
  s->stream = std::move(*stream);
  s->segment_len = segment_len;
  s->recent_ids_kept = static_cast<size_t>(s->stream->capacity()) + static_cast<size_t>(limits_.max_segment_len);
  s->created_ms = s->last_used_ms = NowMs();
  s->version = 1;  // a new session is not in the store yet: the next snapshot writes it
  Admit(s);
  if (metrics_) metrics_->SessionCreated();
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
  std::unique_lock<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  for (int attempt = 0; it == sessions_.end() && writer_ && attempt < kRestoreAttempts; ++attempt) {
    lock.unlock();
    absl::StatusOr<SessionSnapshot> restored = Restore(id, nullptr);
    if (!absl::IsAlreadyExists(restored.status())) return restored;
    lock.lock();
    it = sessions_.find(id);
  }
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
    if (writer_) {  // spilled, or from an earlier run: delete it where it is
      const SnapshotWriter::Pending pending = writer_->Find(id);
      if (pending.queued) {
        if (pending.image == nullptr) return request->Answer(missing);
        writer_->Put(id, nullptr, "delete");
        return request->Answer(absl::OkStatus());
      }
      absl::Status gone = writer_->store()->Delete(id);
      if (gone.ok() || !absl::IsNotFound(gone)) return request->Answer(gone.ok() ? gone : absl::UnavailableError(absl::StrCat("the state store failed: ", gone.message())));
    }
    return request->Answer(missing);
  }
  std::shared_ptr<Session> s = it->second;
  if (!s->held()) {
    Remove(s, "");
    lock.unlock();
    if (writer_) writer_->Put(id, nullptr, "delete");
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
    if (writer_) writer_->Put((*taken)->id, nullptr, "delete");
    request->done(absl::OkStatus());
  };
  s->state = SessionState::kDraining;  // until the holder lets go (the request may give up meanwhile)
  s->waiters.push_front({std::move(ready), /*reserve_undo=*/false});
}

absl::Status SessionManager::HeldError(const std::string& id) {
  return absl::FailedPreconditionError(
      absl::StrCat(SessionRef(id), " has a call running; delete it when the call ends (or cancel the call)"));
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Take(const std::shared_ptr<Session>& s, bool reserve_undo) {
  if (s->state == SessionState::kRemoved) return NotFound(s->id);
  // A call may overwrite every live pool row: reserve room for its undo log first.
  const int64_t undo = reserve_undo ? s->pool_bytes : 0;
  idle_lru_.erase(s->lru);  // it is idle here (Acquire, or Release's hand-over)
  s->state = SessionState::kRunning;  // off the eviction list while making room
  absl::Status room = MakeRoom(undo, /*new_session=*/false, s->id, /*pool=*/false);
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
  // Spilled, or from before a restart: restore it, taken for this call in the same step (in between, room
  // made for another call could spill it again).
  for (int attempt = 0; it == sessions_.end() && writer_ && attempt < kRestoreAttempts; ++attempt) {
    lock.unlock();
    Taken taken{reserve_undo, nullptr};
    absl::StatusOr<SessionSnapshot> restored = Restore(id, &taken);
    if (restored.ok()) return ready(std::move(taken.session));
    if (!absl::IsAlreadyExists(restored.status())) return ready(restored.status());
    lock.lock();  // another call restored it meanwhile: take it as usual
    it = sessions_.find(id);
  }
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
    LeaveMemory(s, absl::StrCat("expired after ", limits_.idle_ttl_seconds, " s idle, at unix ms ", NowMs()),
                "idle_ttl");
    ++expired;
  }
  return expired;
}

absl::StatusOr<std::string> SessionManager::EncodeImage(const SessionImage& image) const {
  return EncodeSessionSnapshot(image.record, image.image, persistence_.identity, persistence_.compression);
}

absl::StatusOr<SessionImage> SessionManager::DecodeImage(absl::string_view blob) const {
  return DecodeSessionSnapshot(blob, model_->config(), persistence_.identity,
                               static_cast<uint64_t>(limits_.memory_budget_bytes) + kSnapshotSlackBytes);
}

absl::StatusOr<SessionSnapshot> SessionManager::Insert(SessionImage image, const std::string& requested_id,
                                                       bool replace) {
  return Insert(std::move(image), requested_id, replace, /*from_store=*/false, nullptr);
}

absl::StatusOr<SessionSnapshot> SessionManager::Insert(SessionImage image, const std::string& requested_id,
                                                       bool replace, bool from_store, Taken* take) {
  const engine::TramsSettings& memory = image.image.settings;
  if (memory.mem_len > limits_.max_mem_len || image.record.segment_len > limits_.max_segment_len) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the session's mem_len ", memory.mem_len, " and segment_len ", image.record.segment_len,
        " exceed this server's limits (--max_mem_len ", limits_.max_mem_len, ", --max_segment_len ",
        limits_.max_segment_len, ")"));
  }
  absl::StatusOr<int64_t> bytes = model_->StreamBytes(memory);  // validates the settings against the model
  if (!bytes.ok()) return bytes.status();
  std::string id = requested_id.empty() ? image.record.id : requested_id;
  if (!BareSessionId(id).empty() && !IsValidScopedSessionId(id)) return InvalidSessionId(std::string(BareSessionId(id)));
  if (!from_store && !BareSessionId(id).empty()) {
    bool in_memory;
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_memory = sessions_.count(id) > 0;
    }
    // In memory: this replica owns it (the checks below decide between ALREADY_EXISTS and replacing it).
    // Otherwise the store must not hold it either, and a shared store gives it to this replica.
    if (!in_memory) {
      if (absl::Status claimed = ClaimNew(id); !claimed.ok()) return claimed;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (BareSessionId(id).empty()) id = NewId(id);
  std::shared_ptr<Session> old;
  if (auto it = sessions_.find(id); it != sessions_.end()) {
    if (!replace) {
      return absl::AlreadyExistsError(absl::StrCat(SessionRef(id), " already exists; import with replace to overwrite it"));
    }
    if (it->second->held()) return HeldError(id);
    old = it->second;
    idle_lru_.erase(old->lru);  // not a candidate for eviction while its replacement is made
    old->state = SessionState::kRunning;
  }
  auto put_back = [&] {
    if (!old) return;
    old->state = SessionState::kIdle;
    idle_lru_.push_back(id);
    old->lru = std::prev(idle_lru_.end());
  };
  if (absl::Status room = MakeRoom(*bytes, /*new_session=*/old == nullptr, id, /*pool=*/true,
                                   /*freed=*/old ? old->pool_bytes : 0);
      !room.ok()) {
    put_back();
    return room;
  }
  absl::StatusOr<std::unique_ptr<engine::EngineStream>> stream = model_->ImportStream(image.image);
  if (!stream.ok()) {
    put_back();
    return stream.status();
  }
  if (old) {
    put_back();
    Remove(old, "");
  }
  auto s = std::make_shared<Session>();
  s->stream = *std::move(stream);
  ApplyRecord(std::move(image.record), s.get());
  s->id = id;
  // Kept ids follow this server's limits.
  s->recent_ids_kept = static_cast<size_t>(s->stream->capacity()) + static_cast<size_t>(limits_.max_segment_len);
  while (s->recent_ids.size() > s->recent_ids_kept) {
    s->recent_ids.pop_front();
    ++s->recent_first;
  }
  s->last_used_ms = NowMs();
  s->version = 1;  // changed relative to the store until SnapshotChanged writes it
  if (from_store) s->saved_version = s->version;
  Admit(s);
  if (take != nullptr) {
    absl::StatusOr<std::shared_ptr<Session>> taken = Take(s, take->reserve_undo);
    if (!taken.ok()) return taken.status();
    take->session = *std::move(taken);
  }
  return Snapshot(*s);
}

absl::StatusOr<SessionSnapshot> SessionManager::Restore(const std::string& id, Taken* take) {
  auto not_found = [&] {
    std::lock_guard<std::mutex> lock(mu_);
    return NotFound(id);
  };
  if (!writer_ || !IsValidScopedSessionId(id)) return not_found();
  const auto start = std::chrono::steady_clock::now();
  // A shared store: only the owner may bring it into memory (UNAVAILABLE while another replica holds it).
  if (absl::Status claimed = persistence_.store->Claim(id); !claimed.ok()) return claimed;
  const SnapshotWriter::Pending pending = writer_->Find(id);
  SessionImage image;
  const char* source = "pending";
  if (pending.queued) {
    if (pending.image == nullptr) return not_found();  // its deletion is on its way to the store
    image = *pending.image;
  } else {
    source = "store";
    absl::StatusOr<std::string> blob = writer_->store()->Get(id);
    if (absl::IsNotFound(blob.status())) return not_found();
    if (!blob.ok()) {
      if (metrics_) metrics_->RestoreFailed("store");
      return absl::UnavailableError(absl::StrCat(SessionRef(id), " could not be read from the state store (",
                                                 writer_->store()->Describe(), "): ", blob.status().message()));
    }
    absl::StatusOr<SessionImage> decoded = DecodeImage(*blob);
    if (!decoded.ok()) {
      if (metrics_) metrics_->RestoreFailed(absl::IsFailedPrecondition(decoded.status()) ? "wrong_model" : "data_loss");
      LogError("a stored session cannot be restored", {{"session", id}, {"error", std::string(decoded.status().message())}});
      return absl::Status(decoded.status().code(), absl::StrCat(SessionRef(id), " cannot be restored from the state store: ",
                                                                decoded.status().message()));
    }
    image = *std::move(decoded);
  }
  absl::StatusOr<SessionSnapshot> inserted = Insert(std::move(image), id, /*replace=*/false, /*from_store=*/true, take);
  if (absl::IsAlreadyExists(inserted.status())) return inserted;  // another call restored it meanwhile
  if (!inserted.ok()) {
    if (metrics_) metrics_->RestoreFailed("no_room");
    return absl::Status(inserted.status().code(),
                        absl::StrCat(SessionRef(id), " cannot be restored: ", inserted.status().message()));
  }
  if (metrics_) metrics_->SessionRestored(source, SecondsSince(start));
  LogInfo("restored a session", {{"session", id}, {"from", source}});
  return inserted;
}

void SessionManager::ExportImage(const std::string& id, ImageFn done) {
  Acquire(id, [this, done = std::move(done)](absl::StatusOr<std::shared_ptr<Session>> taken) {
    if (!taken.ok()) return done(taken.status());
    absl::StatusOr<std::shared_ptr<SessionImage>> image = ImageOf(**taken);  // the call's: nobody else uses it
    Release(*taken);
    if (!image.ok()) return done(image.status());
    done(std::move(**image));
  }, /*reserve_undo=*/false);
}

void SessionManager::Fork(const std::string& id, std::string new_id, SnapshotFn done) {
  ExportImage(id, [this, new_id = std::move(new_id), done = std::move(done)](absl::StatusOr<SessionImage> image) {
    if (!image.ok()) return done(image.status());
    image->record.created_ms = NowMs();
    image->record.id.clear();
    done(Insert(*std::move(image), new_id, /*replace=*/false));
  });
}

int SessionManager::SnapshotChanged(const char* trigger) {
  if (!writer_) return 0;
  std::vector<std::string> ids;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, s] : sessions_) ids.push_back(id);
  }
  // One session per hold of the lock: calls wait for at most one pool copy, never for all of them.
  int n = 0;
  for (const std::string& id : ids) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(id);
    if (it == sessions_.end()) continue;
    Session& s = *it->second;
    if (s.held() || s.version == s.saved_version) continue;  // a held one is caught next time
    absl::StatusOr<std::shared_ptr<SessionImage>> image = ImageOf(s);
    if (!image.ok()) {
      LogError("exporting a session for its snapshot failed", {{"session", id}, {"error", std::string(image.status().message())}});
      continue;
    }
    writer_->Put(id, *std::move(image), trigger);
    s.saved_version = s.version;
    ++n;
  }
  return n;
}

int SessionManager::SaveAll(std::chrono::milliseconds deadline, bool* flushed) {
  const int n = SnapshotChanged("drain");
  *flushed = writer_ == nullptr || writer_->Flush(deadline);
  if (*flushed && writer_ && persistence_.store->shared()) {
    // Written: another replica may take them over at once (the next call routed there restores them).
    std::vector<std::string> ids;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [id, s] : sessions_) ids.push_back(id);
    }
    for (const std::string& id : ids) persistence_.store->Release(id);
  }
  return n;
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
