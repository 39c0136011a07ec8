// What the streaming calls (score_call.cc, generate_call.cc) use of the server, handed to them by
// LmService: the sessions, the scheduler, the metrics, the text codec and the options, plus the count of
// running calls that shutdown waits on.
#pragma once

#include <atomic>
#include <cstdint>

#include "engine/engine.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/server_options.h"
#include "server/session_manager.h"
#include "server/tenant_limiter.h"
#include "server/text_codec.h"

namespace trams::server {

// Running calls, and whether new ones are still taken (shutdown drains).
class CallTracker {
 public:
  void StartDraining() { draining_ = true; }
  bool draining() const { return draining_; }
  int running() const { return running_.load(); }
  void Started() { ++running_; }
  void Ended() { --running_; }

 private:
  std::atomic<bool> draining_{false};
  std::atomic<int> running_{0};
};

// Every N-th segment server-wide samples the TRAMS memory-share statistic (it costs a pass over the scores).
class MemoryShareSampler {
 public:
  explicit MemoryShareSampler(int every) : every_(every) {}
  bool Next() { return every_ > 0 && segments_.fetch_add(1) % static_cast<uint64_t>(every_) == 0; }

 private:
  const int every_;
  std::atomic<uint64_t> segments_{0};
};

struct CallEnv {
  SessionManager* sessions = nullptr;
  Scheduler* scheduler = nullptr;
  Metrics* metrics = nullptr;  // may be null
  const TextCodec* codec = nullptr;
  const ServerOptions* options = nullptr;
  CallTracker* calls = nullptr;
  MemoryShareSampler* share = nullptr;
  TenantLimiter* tenants = nullptr;  // with --auth_keys: running calls and tokens per tenant

  // Output options for a segment: TRAMS selections (and sometimes the memory share) on TRAMS sessions.
  engine::OutputOptions SegmentOptions(const Session& s, engine::OutputOptions o, bool selections = true) const {
    o.selections = selections && s.stream->settings().mode == engine::MemoryMode::kTrams;
    o.memory_share = o.selections && share->Next();
    return o;
  }
  void RecordMemoryShare(const engine::SegmentOutput& out) const {
    if (metrics == nullptr || out.memory_share_samples == 0) return;
    metrics->SelectionShare(out.memory_share_selected / out.memory_share_samples,
                            out.memory_share_recent / out.memory_share_samples);
  }
};

}  // namespace trams::server
