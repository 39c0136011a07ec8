// SessionStore on a local directory (--state_dir): `<dir>/<id>.snap`, written as a temporary file, fsync'd,
// renamed over the old one, and the directory fsync'd, so a crash at any point leaves the old blob or the
// new one. Scoped session ids (server/scoped_id.h: [A-Za-z0-9._:+-]) hold no '/', so every name stays in `dir`.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/session_store.h"

namespace trams::server {

class DiskStore final : public SessionStore {
 public:
  // Creates `dir` if needed; FAILED_PRECONDITION (saying why) when it cannot be made or written.
  static absl::StatusOr<std::unique_ptr<DiskStore>> Open(const std::string& dir);

  std::string Describe() const override { return "dir " + dir_; }
  absl::Status Put(const std::string& id, const std::string& blob) override;
  absl::StatusOr<std::string> Get(const std::string& id) override;
  absl::Status Delete(const std::string& id) override;
  absl::StatusOr<bool> Contains(const std::string& id) override;

 private:
  explicit DiskStore(std::string dir) : dir_(std::move(dir)) {}
  std::string PathOf(const std::string& id) const;
  std::string dir_;
};

}  // namespace trams::server
