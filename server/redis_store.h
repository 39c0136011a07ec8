// SessionStore on Redis (--state_store redis://HOST:PORT[/DB]), shared by the replicas behind one address.
// A snapshot is one key written by one SET of the whole blob (`trams:v1:session:<id>`), so a reader gets the
// old blob or the new one. Ownership is a lease key (`trams:v1:owner:<id>` = this replica's id, with an
// expiry): set only if absent, extended and deleted only by its holder (a Lua script compares first), so a
// second replica takes a session over only once the owner gave it up (drain, delete) or stopped renewing
// (crash). One connection (hiredis, synchronous), reconnected when it fails. server/README.md, "Persistence".
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/session_store.h"

struct redisContext;

namespace trams::server {

struct RedisAddress {
  std::string host;
  int port = 6379;
  int db = 0;
};
// "redis://HOST:PORT[/DB]" (PORT optional); INVALID_ARGUMENT saying what is wrong.
absl::StatusOr<RedisAddress> ParseRedisUrl(const std::string& url);

class RedisStore final : public SessionStore {
 public:
  // Connects (UNAVAILABLE, saying why, when Redis does not answer; PERMISSION_DENIED when it wants a
  // password or refuses this one). `replica` names this process in the lease keys; `lease` is how long a
  // claim lasts without renewal; `password` (if any) is sent with AUTH on every connection.
  static absl::StatusOr<std::unique_ptr<RedisStore>> Open(const std::string& url, std::string replica,
                                                          std::chrono::milliseconds lease, std::string password = "");
  ~RedisStore() override;

  std::string Describe() const override { return url_; }
  absl::Status Put(const std::string& id, const std::string& blob) override;
  absl::StatusOr<std::string> Get(const std::string& id) override;
  absl::Status Delete(const std::string& id) override;
  absl::StatusOr<bool> Contains(const std::string& id) override;
  absl::Status Claim(const std::string& id) override;
  std::vector<std::string> Renew(const std::vector<std::string>& ids) override;
  void Release(const std::string& id) override;
  bool shared() const override { return true; }
  const std::string& replica() const { return replica_; }

 private:
  RedisStore(std::string url, RedisAddress address, std::string replica, std::chrono::milliseconds lease,
             std::string password)
      : url_(std::move(url)), address_(std::move(address)), replica_(std::move(replica)), lease_(lease),
        password_(std::move(password)) {}
  absl::Status Connect();  // mu_ held
  // Runs one command (argv form, binary-safe) and hands its reply to `read`; reconnects once on failure.
  template <class Read>
  absl::Status Command(const std::vector<std::string>& argv, Read&& read);

  const std::string url_;
  const RedisAddress address_;
  const std::string replica_;
  const std::chrono::milliseconds lease_;
  const std::string password_;
  std::mutex mu_;
  redisContext* ctx_ = nullptr;
};

}  // namespace trams::server
