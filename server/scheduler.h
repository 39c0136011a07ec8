// The scheduler: a bounded queue of segments and one engine worker thread that batches them
// (continuous batching across sessions: whatever is ready when a forward starts runs together, at most
// one segment per session, in arrival order, so no session starves).
//
// Contract: a job's `stream` belongs to the submitting call until `done` runs (on the worker thread);
// the call submits its next segment only after that, so a session never has two jobs queued.
// A job may carry a `not_before` time (its tenant's tokens_per_second): it waits aside until then, outside
// the queue's bound (each call has at most one job, so calls bound them). Expedite (a cancelled call),
// ReleaseWaiting (a drain) and a stopping scheduler run waiting jobs at once.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "server/server_options.h"

namespace trams::server {

class Metrics;

struct SegmentJob {
  engine::EngineStream* stream = nullptr;
  std::vector<int32_t> tokens;  // empty: only the next-token distribution (options.next_distribution)
  engine::OutputOptions options;
  bool commit = true;  // false: provisional (see SegmentInput::commit)
  std::function<void(absl::StatusOr<engine::SegmentOutput>)> done;
  std::chrono::steady_clock::time_point enqueued;
  std::chrono::steady_clock::time_point not_before;  // default: at once
};

class Scheduler {
 public:
  Scheduler(engine::Engine* model, const SchedulerOptions& options, Metrics* metrics);
  ~Scheduler();  // stops after the queued jobs ran

  // RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE once stopping.
  absl::Status Submit(SegmentJob job);
  // Finishes queued jobs, then joins the worker.
  void Stop();
  // The waiting job of `stream` (if any) runs now: its call was cancelled and must not wait to end.
  void Expedite(const engine::EngineStream* stream);
  // Every waiting job runs now (the server drains: no call may outwait the drain).
  void ReleaseWaiting();
  // Calls with work in flight (the worker waits briefly for them to join a batch).
  void AddActiveCall();
  void RemoveActiveCall();

 private:
  void Run();
  void RunBatch(std::vector<SegmentJob>& batch);
  void PromoteDue(std::chrono::steady_clock::time_point now);  // mu_ held: waiting jobs now due to the queue

  engine::Engine* model_;
  SchedulerOptions options_;
  Metrics* metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<SegmentJob> queue_;
  std::multimap<std::chrono::steady_clock::time_point, SegmentJob> waiting_;  // by not_before
  int active_calls_ = 0;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace trams::server
