#include "server/redis_store.h"

#include <hiredis/hiredis.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/snapshot_file.h"
#include "server/session_id.h"

namespace trams::server {
namespace {

// Keys carry the snapshot format version: a server of another format never reads or overwrites them.
std::string SessionKey(const std::string& id) {
  return absl::StrCat("trams:v", engine::kSnapshotFormatVersion, ":session:", id);
}
std::string OwnerKey(const std::string& id) {
  return absl::StrCat("trams:v", engine::kSnapshotFormatVersion, ":owner:", id);
}

// Extends this replica's lease, or takes it again where it lapsed and nobody else took it; 0: another owns it.
constexpr char kRenewScript[] =
    "local v = redis.call('GET', KEYS[1]) "
    "if v == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
    "elseif not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 else return 0 end";
// Writes the snapshot unless another replica owns the session (fencing: a replica that lost its lease
// cannot overwrite the new owner's state).
constexpr char kPutScript[] =
    "local v = redis.call('GET', KEYS[1]) "
    "if v == ARGV[1] or not v then redis.call('SET', KEYS[2], ARGV[2]) return 1 else return 0 end";
constexpr char kReleaseScript[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

}  // namespace

absl::StatusOr<RedisAddress> ParseRedisUrl(const std::string& url) {
  const std::string prefix = "redis://";
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("--state_store must be redis://HOST:PORT[/DB] (", why, "), got \"",
                                                   url.substr(0, 200), "\""));
  };
  if (url.compare(0, prefix.size(), prefix) != 0) return bad("it must start with redis://");
  std::string rest = url.substr(prefix.size());
  RedisAddress a;
  if (const size_t slash = rest.find('/'); slash != std::string::npos) {
    if (!absl::SimpleAtoi(rest.substr(slash + 1), &a.db) || a.db < 0 || a.db > 1 << 20) return bad("bad database number");
    rest.resize(slash);
  }
  if (const size_t colon = rest.rfind(':'); colon != std::string::npos) {
    if (!absl::SimpleAtoi(rest.substr(colon + 1), &a.port) || a.port < 1 || a.port > 65535) return bad("bad port");
    rest.resize(colon);
  }
  if (rest.empty()) return bad("no host");
  a.host = rest;
  return a;
}

absl::StatusOr<std::unique_ptr<RedisStore>> RedisStore::Open(const std::string& url, std::string replica,
                                                             std::chrono::milliseconds lease, std::string password) {
  absl::StatusOr<RedisAddress> address = ParseRedisUrl(url);
  if (!address.ok()) return address.status();
  std::unique_ptr<RedisStore> store(new RedisStore(url, *address, std::move(replica), lease, std::move(password)));
  std::lock_guard<std::mutex> lock(store->mu_);
  if (absl::Status s = store->Connect(); !s.ok()) return s;
  return store;
}

RedisStore::~RedisStore() {
  if (ctx_ != nullptr) redisFree(ctx_);
}

absl::Status RedisStore::Connect() {
  if (ctx_ != nullptr) {
    redisFree(ctx_);
    ctx_ = nullptr;
  }
  const timeval timeout{5, 0};
  ctx_ = redisConnectWithTimeout(address_.host.c_str(), address_.port, timeout);
  if (ctx_ == nullptr || ctx_->err != 0) {
    const std::string why = ctx_ == nullptr ? "out of memory" : ctx_->errstr;
    if (ctx_ != nullptr) redisFree(ctx_);
    ctx_ = nullptr;
    return absl::UnavailableError(absl::StrCat("cannot reach the state store ", url_, ": ", why));
  }
  redisSetTimeout(ctx_, timeout);
  // AUTH first (a password-protected Redis answers every other command NOAUTH), then SELECT, then a PING
  // so that a missing password is a failed start here rather than a failing write later.
  auto run = [&](redisReply* r, const char* what) -> absl::Status {
    const std::string error = r == nullptr ? std::string(ctx_->errstr)
                              : r->type == REDIS_REPLY_ERROR ? std::string(r->str, r->len) : std::string();
    if (r != nullptr) freeReplyObject(r);
    if (error.empty()) return absl::OkStatus();
    if (error.rfind("NOAUTH", 0) == 0 || error.rfind("WRONGPASS", 0) == 0 || error.find("invalid password") != std::string::npos) {
      return absl::PermissionDeniedError(absl::StrCat(
          "the state store ", url_, " refused ", what, ": ", error.substr(0, 200),
          password_.empty() ? " (it wants a password: --state_store_password_file)" : " (check --state_store_password_file)"));
    }
    return absl::UnavailableError(absl::StrCat("the state store ", url_, " refused ", what, ": ", error.substr(0, 200)));
  };
  if (!password_.empty()) {
    absl::Status s = run(static_cast<redisReply*>(redisCommand(ctx_, "AUTH %b", password_.data(), password_.size())), "AUTH");
    if (!s.ok()) return s;
  }
  if (address_.db != 0) {
    absl::Status s = run(static_cast<redisReply*>(redisCommand(ctx_, "SELECT %d", address_.db)), "SELECT");
    if (!s.ok()) return s;
  }
  return run(static_cast<redisReply*>(redisCommand(ctx_, "PING")), "PING");
}

template <class Read>
absl::Status RedisStore::Command(const std::vector<std::string>& argv, Read&& read) {
  std::vector<const char*> args;
  std::vector<size_t> lens;
  for (const std::string& a : argv) {
    args.push_back(a.data());
    lens.push_back(a.size());
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (ctx_ == nullptr || ctx_->err != 0) {
      if (absl::Status s = Connect(); !s.ok()) {
        if (attempt == 1) return s;
        continue;
      }
    }
    auto* reply = static_cast<redisReply*>(redisCommandArgv(ctx_, static_cast<int>(args.size()), args.data(), lens.data()));
    if (reply == nullptr) continue;  // the connection failed: reconnect and retry once
    absl::Status s;
    if (reply->type == REDIS_REPLY_ERROR) {
      s = absl::UnavailableError(absl::StrCat("the state store ", url_, " answered ", argv[0], " with: ",
                                              std::string(reply->str, reply->len)));
    } else {
      s = read(reply);
    }
    freeReplyObject(reply);
    return s;
  }
  return absl::UnavailableError(absl::StrCat("the state store ", url_, " does not answer: ",
                                             ctx_ != nullptr ? ctx_->errstr : "not connected"));
}

absl::Status RedisStore::Put(const std::string& id, const std::string& blob) {
  int64_t written = 0;
  absl::Status s = Command({"EVAL", kPutScript, "2", OwnerKey(id), SessionKey(id), replica_, blob}, [&](redisReply* r) {
    written = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  if (written == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(SessionRef(id), " is owned by another replica now: this replica's snapshot is not written"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RedisStore::Get(const std::string& id) {
  std::string blob;
  bool found = false;
  absl::Status s = Command({"GET", SessionKey(id)}, [&](redisReply* r) {
    if (r->type == REDIS_REPLY_STRING) {
      blob.assign(r->str, r->len);
      found = true;
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  if (!found) return absl::NotFoundError(absl::StrCat("no snapshot of session '", id, "' in ", url_));
  return blob;
}

absl::Status RedisStore::Delete(const std::string& id) {
  int64_t n = 0;
  absl::Status s = Command({"DEL", SessionKey(id)}, [&](redisReply* r) {
    n = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  Release(id);
  if (n == 0) return absl::NotFoundError(absl::StrCat("no snapshot of session '", id, "' in ", url_));
  return absl::OkStatus();
}

absl::StatusOr<bool> RedisStore::Contains(const std::string& id) {
  bool found = false;
  absl::Status s = Command({"EXISTS", SessionKey(id)}, [&](redisReply* r) {
    found = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return found;
}

absl::Status RedisStore::Claim(const std::string& id) {
  const std::string ms = std::to_string(lease_.count());
  bool claimed = false;
  absl::Status s = Command({"SET", OwnerKey(id), replica_, "NX", "PX", ms}, [&](redisReply* r) {
    claimed = r->type == REDIS_REPLY_STATUS;  // "OK"; nil when someone holds it
    return absl::OkStatus();
  });
  if (!s.ok() || claimed) return s;
  std::string owner;
  int64_t ttl = 0;
  s = Command({"GET", OwnerKey(id)}, [&](redisReply* r) {
    if (r->type == REDIS_REPLY_STRING) owner.assign(r->str, r->len);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  if (owner == replica_) return Renew({id}).empty() ? absl::OkStatus() : Claim(id);
  if (owner.empty()) return Claim(id);  // it lapsed between the two commands
  Command({"PTTL", OwnerKey(id)}, [&](redisReply* r) {
    ttl = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    return absl::OkStatus();
  }).IgnoreError();
  return absl::UnavailableError(absl::StrCat(SessionRef(id), " is held by replica ", owner.substr(0, 128),
                                             " (its lease runs out within ", std::max<int64_t>(ttl, 0),
                                             " ms unless it renews it); retry, routed by the x-session-id header"));
}

std::vector<std::string> RedisStore::Renew(const std::vector<std::string>& ids) {
  // Pipelined, in batches: one round trip per batch, not per session (the connection is shared with the
  // writer's SETs and the restores' GETs).
  constexpr size_t kBatch = 256;
  std::vector<std::string> lost;
  const std::string ms = std::to_string(lease_.count());
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t from = 0; from < ids.size(); from += kBatch) {
    if ((ctx_ == nullptr || ctx_->err != 0) && !Connect().ok()) return lost;  // unreachable: keep serving
    const size_t to = std::min(ids.size(), from + kBatch);
    for (size_t i = from; i < to; ++i) {
      const std::string key = OwnerKey(ids[i]);
      const char* argv[] = {"EVAL", kRenewScript, "1", key.c_str(), replica_.c_str(), ms.c_str()};
      const size_t lens[] = {4, sizeof(kRenewScript) - 1, 1, key.size(), replica_.size(), ms.size()};
      redisAppendCommandArgv(ctx_, 6, argv, lens);
    }
    for (size_t i = from; i < to; ++i) {
      void* raw = nullptr;
      if (redisGetReply(ctx_, &raw) != REDIS_OK || raw == nullptr) return lost;  // reconnects next time
      auto* r = static_cast<redisReply*>(raw);
      if (r->type == REDIS_REPLY_INTEGER && r->integer == 0) lost.push_back(ids[i]);
      freeReplyObject(r);
    }
  }
  return lost;
}

void RedisStore::Release(const std::string& id) {
  Command({"EVAL", kReleaseScript, "1", OwnerKey(id), replica_}, [](redisReply*) { return absl::OkStatus(); })
      .IgnoreError();
}

}  // namespace trams::server
