#include "server/snapshot_writer.h"

#include <chrono>

#include "server/log.h"
#include "server/metrics.h"

namespace trams::server {

SnapshotWriter::SnapshotWriter(SessionStore* store, SnapshotIdentity identity, engine::SnapshotCompression compression,
                               Metrics* metrics)
    : store_(store), identity_(std::move(identity)), compression_(compression), metrics_(metrics),
      thread_([this] { Run(); }) {}

SnapshotWriter::~SnapshotWriter() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

absl::StatusOr<std::string> SnapshotWriter::Encode(const SessionImage& image) const {
  return EncodeSessionSnapshot(image.record, image.image, identity_, compression_);
}

void SnapshotWriter::Put(const std::string& id, std::shared_ptr<const SessionImage> image, const char* trigger) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    Entry& e = pending_[id];
    e.image = std::move(image);
    e.trigger = trigger;
    e.seq = next_seq_++;
    if (!e.queued) {
      e.queued = true;
      order_.push_back(id);
    }
  }
  work_cv_.notify_one();
}

SnapshotWriter::Pending SnapshotWriter::Find(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(id);
  if (it == pending_.end()) return {};
  return {true, it->second.image};
}

bool SnapshotWriter::Flush(std::chrono::milliseconds deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_for(lock, deadline, [this] { return order_.empty() && in_flight_ == 0; });
}

void SnapshotWriter::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [this] { return stopping_ || !order_.empty(); });
    if (order_.empty()) break;  // stopping, and everything is written
    const std::string id = order_.front();
    order_.pop_front();
    Entry& e = pending_.at(id);
    e.queued = false;
    const Entry job = e;
    ++in_flight_;
    lock.unlock();

    const auto start = std::chrono::steady_clock::now();
    bool written = true;
    if (job.image == nullptr) {
      if (absl::Status s = store_->Delete(id); !s.ok() && !absl::IsNotFound(s)) {
        LogError("deleting a session from the store failed", {{"session", id}, {"error", std::string(s.message())}});
        written = false;
      }
    } else {
      absl::StatusOr<std::string> blob = Encode(*job.image);
      absl::Status s = blob.ok() ? store_->Put(id, *blob) : blob.status();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (!s.ok()) {
        LogError("writing a session snapshot failed",
                 {{"session", id}, {"trigger", job.trigger}, {"error", std::string(s.message())}});
        if (metrics_) metrics_->SnapshotFailed(blob.ok() ? "store" : "encode");
        // An image that cannot be encoded never will be, nor one another replica owns now: drop those;
        // retry what the store failed to take.
        written = !blob.ok() || absl::IsFailedPrecondition(s);
      } else if (metrics_) {
        metrics_->SnapshotWritten(job.trigger, static_cast<int64_t>(blob->size()), seconds);
      }
    }

    lock.lock();
    --in_flight_;
    auto it = pending_.find(id);
    if (it != pending_.end() && it->second.seq == job.seq) {  // else a newer version is queued
      if (written || stopping_) {
        if (!written) LogError("giving up on a session snapshot at shutdown", {{"session", id}});
        pending_.erase(it);
      } else if (!it->second.queued) {
        // The store failed: keep the image (restores still find it here) and retry after a pause.
        it->second.queued = true;
        order_.push_back(id);
        work_cv_.wait_for(lock, kRetryPause, [this] { return stopping_; });
      }
    }
    if (order_.empty() && in_flight_ == 0) idle_cv_.notify_all();
  }
  idle_cv_.notify_all();
}

}  // namespace trams::server
