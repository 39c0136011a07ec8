// Where session snapshots persist (server/session_snapshot.h): one blob per session id, written whole and
// atomically, so a reader sees the old blob or the new one, never a mix. Implementations: DiskStore
// (--state_dir). Thread-safe; called off the engine thread and never under the session manager's lock.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace trams::server {

class SessionStore {
 public:
  virtual ~SessionStore() = default;
  virtual std::string Describe() const = 0;  // for logs: "dir /var/lib/trams"
  virtual absl::Status Put(const std::string& id, const std::string& blob) = 0;
  // NOT_FOUND when the store holds nothing for `id`.
  virtual absl::StatusOr<std::string> Get(const std::string& id) = 0;
  // NOT_FOUND when it held nothing for `id`.
  virtual absl::Status Delete(const std::string& id) = 0;
};

}  // namespace trams::server
