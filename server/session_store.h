// Where session snapshots persist (server/session_snapshot.h): one blob per session id, written whole and
// atomically, so a reader sees the old blob or the new one, never a mix. Implementations: DiskStore
// (--state_dir, one process) and RedisStore (--state_store, shared by replicas, with ownership leases).
// Thread-safe; called off the engine thread and never under the session manager's lock.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace trams::server {

class SessionStore {
 public:
  virtual ~SessionStore() = default;
  virtual std::string Describe() const = 0;  // for logs: "dir /var/lib/trams"
  // FAILED_PRECONDITION (a shared store) when another replica owns the session now: never retry that.
  virtual absl::Status Put(const std::string& id, const std::string& blob) = 0;
  // NOT_FOUND when the store holds nothing for `id`.
  virtual absl::StatusOr<std::string> Get(const std::string& id) = 0;
  // NOT_FOUND when it held nothing for `id`.
  virtual absl::Status Delete(const std::string& id) = 0;
  virtual absl::StatusOr<bool> Contains(const std::string& id) = 0;

  // Ownership, for a store several replicas share: a session lives in one replica's memory at a time.
  // Claim makes this replica the owner (OK when the session was free or already ours; UNAVAILABLE naming
  // the owner while another replica's lease runs). Renew extends this replica's leases and returns the ids
  // it no longer owns (taken over after a lapse). Release gives a lease up. A single-process store owns all.
  virtual absl::Status Claim(const std::string& /*id*/) { return absl::OkStatus(); }
  virtual std::vector<std::string> Renew(const std::vector<std::string>& /*ids*/) { return {}; }
  virtual void Release(const std::string& /*id*/) {}
  virtual bool shared() const { return false; }  // true: Claim/Renew/Release matter
};

}  // namespace trams::server
