// Per-tenant limits on what running calls do (the quotas of --auth_keys, server/auth_keys.h): how many
// Score, Generate, Export and Import calls a tenant runs at once (max_concurrent_calls), and how many
// tokens per second they run through the model (tokens_per_second). Sessions and pool bytes are the session manager's.
//
// The rate is a token bucket holding one second's worth, charged before each segment runs. A segment the
// bucket cannot pay for is delayed until the debt is repaid, never refused: a tenant's long calls slow
// down to its rate instead of failing midway (and rolling back). Thread-safe; tenants without quotas
// (and "" without --auth_keys) are not limited.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "server/auth_keys.h"

namespace trams::server {

class Metrics;

class TenantLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  TenantLimiter(const std::map<std::string, TenantQuota>& quotas, Metrics* metrics);

  // A running-call slot for `tenant`, or RESOURCE_EXHAUSTED naming the quota. EndCall gives it back.
  absl::Status StartCall(const std::string& tenant);
  void EndCall(const std::string& tenant);

  // Charges `tokens` to the tenant's bucket; how long to wait before running them (zero while it holds
  // enough). `now` is for the tests.
  Clock::duration Reserve(const std::string& tenant, int64_t tokens, Clock::time_point now = Clock::now());
  // Gives back what Reserve charged for tokens that never ran (their segment was refused).
  void Refund(const std::string& tenant, int64_t tokens);
  // The most a tenant can owe, in seconds of its rate (a bound on any one wait).
  static constexpr double kMaxDebtSeconds = 3600;

 private:
  struct Tenant {
    TenantQuota quota;
    int64_t running = 0;
    double bucket = 0;  // tokens; negative: owed
    Clock::time_point refilled;
  };
  Metrics* const metrics_;
  std::mutex mu_;
  std::map<std::string, Tenant> tenants_;  // only tenants with a call or rate quota
};

}  // namespace trams::server
