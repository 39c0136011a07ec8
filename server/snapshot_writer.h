// The write-behind queue between the session manager and the store. The manager hands a session's image
// (or its deletion) over under its own lock, in O(1); one writer thread encodes and writes them, last
// version wins per id, one write per id at a time, so the store never goes back to an older version. A
// restore looks here first: an image not yet written restores from memory, a deletion not yet applied
// means the session is gone.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "engine/snapshot_file.h"
#include "server/session_snapshot.h"
#include "server/session_store.h"

namespace trams::server {

class Metrics;

class SnapshotWriter {
 public:
  SnapshotWriter(SessionStore* store, SnapshotIdentity identity, engine::SnapshotCompression compression,
                 Metrics* metrics);
  ~SnapshotWriter();  // writes what is queued (one try each once stopping), then stops

  // Queues `image` (null: delete the id from the store). `trigger` labels the metric (interval, drain, spill).
  void Put(const std::string& id, std::shared_ptr<const SessionImage> image, const char* trigger);
  struct Pending {
    bool queued = false;                       // false: ask the store
    std::shared_ptr<const SessionImage> image;  // null while queued: deleted
  };
  Pending Find(const std::string& id);
  // Waits until nothing is queued or being written (true), or `deadline` passed (false: the store fails).
  bool Flush(std::chrono::milliseconds deadline);
  static constexpr std::chrono::milliseconds kRetryPause{1000};  // after the store failed a write

  SessionStore* store() const { return store_; }
  const SnapshotIdentity& identity() const { return identity_; }
  absl::StatusOr<std::string> Encode(const SessionImage& image) const;

 private:
  struct Entry {
    std::shared_ptr<const SessionImage> image;
    const char* trigger = "";
    uint64_t seq = 0;
    bool queued = false;  // in order_ (false while only being written)
  };
  void Run();

  SessionStore* const store_;
  const SnapshotIdentity identity_;
  const engine::SnapshotCompression compression_;
  Metrics* const metrics_;
  std::mutex mu_;
  std::condition_variable work_cv_, idle_cv_;
  std::map<std::string, Entry> pending_;
  std::deque<std::string> order_;
  uint64_t next_seq_ = 1;
  int in_flight_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace trams::server
