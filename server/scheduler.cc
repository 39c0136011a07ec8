#include "server/scheduler.h"

#include "absl/strings/str_cat.h"
#include "server/metrics.h"

namespace trams::server {
namespace {

// Errors an engine returns before anything ran (its checks, a workspace it could not get): the streams are
// as they were. Anything else may have stopped a forward half way.
bool ChangedNothing(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kResourceExhausted ||
         s.code() == absl::StatusCode::kFailedPrecondition;
}

}  // namespace

using Clock = std::chrono::steady_clock;

Scheduler::Scheduler(engine::Engine* model, const SchedulerOptions& options, Metrics* metrics)
    : model_(model), options_(options), metrics_(metrics), worker_([this] { Run(); }) {}

Scheduler::~Scheduler() { Stop(); }

absl::Status Scheduler::Submit(SegmentJob job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the server is shutting down");
    if (static_cast<int>(queue_.size()) >= options_.max_queue) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the engine queue is full (", options_.max_queue, " segments); retry with backoff"));
    }
    job.enqueued = Clock::now();
    if (job.not_before > job.enqueued) {
      const Clock::time_point at = job.not_before;
      waiting_.emplace(at, std::move(job));
    } else {
      queue_.push_back(std::move(job));
    }
    if (metrics_) metrics_->QueueLength(static_cast<int64_t>(queue_.size()));
  }
  cv_.notify_one();
  return absl::OkStatus();
}

void Scheduler::AddActiveCall() {
  std::lock_guard<std::mutex> lock(mu_);
  ++active_calls_;
}

void Scheduler::RemoveActiveCall() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --active_calls_;
  }
  cv_.notify_one();
}

void Scheduler::Expedite(const engine::EngineStream* stream) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
      if (it->second.stream != stream) continue;
      queue_.push_back(std::move(it->second));
      waiting_.erase(it);
      break;  // a session has at most one job
    }
  }
  cv_.notify_one();
}

void Scheduler::ReleaseWaiting() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    PromoteDue(Clock::time_point::max());
  }
  cv_.notify_one();
}

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !worker_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void Scheduler::Run() {
  std::vector<SegmentJob> batch;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      for (;;) {
        PromoteDue(stopping_ ? Clock::time_point::max() : Clock::now());
        if (!queue_.empty() || stopping_) break;
        if (waiting_.empty()) {
          cv_.wait(lock);
        } else {
          const Clock::time_point due = waiting_.begin()->first;  // a copy: the node may go while we wait
          cv_.wait_until(lock, due);
        }
      }
      if (queue_.empty()) return;  // stopping and drained
      // Calls that just got a result usually submit their next segment within microseconds: give
      // them a moment to join, so that N busy sessions make one batch of N rather than N batches.
      const auto deadline = Clock::now() + std::chrono::microseconds(options_.batch_wait_us);
      cv_.wait_until(lock, deadline, [&] {
        // Calls whose job waits for its tenant's rate will not join this batch.
        const int ready_calls = active_calls_ - static_cast<int>(waiting_.size());
        return stopping_ || static_cast<int>(queue_.size()) >= std::min(ready_calls, options_.max_batch);
      });
      const size_t take = std::min<size_t>(queue_.size(), static_cast<size_t>(options_.max_batch));
      batch.clear();
      for (size_t i = 0; i < take; ++i) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      if (metrics_) metrics_->QueueLength(static_cast<int64_t>(queue_.size()));
    }
    RunBatch(batch);
  }
}

void Scheduler::PromoteDue(Clock::time_point now) {
  while (!waiting_.empty() && waiting_.begin()->first <= now) {
    queue_.push_back(std::move(waiting_.begin()->second));
    queue_.back().enqueued = Clock::now();  // queue wait counts from here: the wait before was the tenant's
    waiting_.erase(waiting_.begin());
  }
}

void Scheduler::RunBatch(std::vector<SegmentJob>& batch) {
  const auto start = Clock::now();
  std::vector<engine::SegmentInput> inputs;
  std::vector<size_t> forward_jobs;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (metrics_) metrics_->QueueWait(std::chrono::duration<double>(start - batch[i].enqueued).count());
    if (batch[i].tokens.empty()) continue;
    inputs.push_back({batch[i].stream, batch[i].tokens, batch[i].options, batch[i].commit});
    forward_jobs.push_back(i);
  }
  std::vector<absl::StatusOr<engine::SegmentOutput>> results(batch.size(), absl::UnknownError("not run"));
  if (!inputs.empty()) {
    std::vector<engine::SegmentOutput> outputs;
    absl::Status s = model_->Forward(inputs, &outputs);
    if (s.ok()) {
      for (size_t k = 0; k < forward_jobs.size(); ++k) results[forward_jobs[k]] = std::move(outputs[k]);
    } else if (!ChangedNothing(s)) {
      // A device error part way through: the batch's pools may be half written, so no job may run again
      // on them. Every call fails and rolls back to its undo log.
      for (size_t k = 0; k < forward_jobs.size(); ++k) results[forward_jobs[k]] = s;
    } else {
      // The batch is checked as a whole: run each job alone so one bad segment fails only itself (and a
      // workspace too large for the whole batch may fit one segment).
      for (size_t k = 0; k < forward_jobs.size(); ++k) {
        std::vector<engine::SegmentOutput> one;
        absl::Status single = model_->Forward({&inputs[k], 1}, &one);
        results[forward_jobs[k]] = single.ok() ? absl::StatusOr<engine::SegmentOutput>(std::move(one[0]))
                                               : absl::StatusOr<engine::SegmentOutput>(single);
      }
    }
    if (metrics_) {
      metrics_->BatchSize(static_cast<int64_t>(inputs.size()));
      metrics_->ForwardSeconds(std::chrono::duration<double>(Clock::now() - start).count());
    }
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!batch[i].tokens.empty()) continue;
    engine::SegmentOutput out;
    absl::Status s = model_->NextTokenLogProbs(*batch[i].stream, &out.next_logprobs);
    results[i] = s.ok() ? absl::StatusOr<engine::SegmentOutput>(std::move(out)) : absl::StatusOr<engine::SegmentOutput>(s);
  }
  for (size_t i = 0; i < batch.size(); ++i) batch[i].done(std::move(results[i]));
}

}  // namespace trams::server
