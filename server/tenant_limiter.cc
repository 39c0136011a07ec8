#include "server/tenant_limiter.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "server/metrics.h"

namespace trams::server {

TenantLimiter::TenantLimiter(const std::map<std::string, TenantQuota>& quotas, Metrics* metrics) : metrics_(metrics) {
  const Clock::time_point now = Clock::now();
  for (const auto& [name, quota] : quotas) {
    if (quota.max_concurrent_calls == 0 && quota.tokens_per_second == 0) continue;
    Tenant& t = tenants_[name];
    t.quota = quota;
    t.bucket = static_cast<double>(quota.tokens_per_second);  // starts full
    t.refilled = now;
  }
}

absl::Status TenantLimiter::StartCall(const std::string& tenant) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = tenants_.find(tenant);
  if (it == tenants_.end()) return absl::OkStatus();
  Tenant& t = it->second;
  if (t.quota.max_concurrent_calls > 0 && t.running >= t.quota.max_concurrent_calls) {
    if (metrics_) metrics_->QuotaRefused(tenant, "max_concurrent_calls");
    return absl::ResourceExhaustedError(absl::StrCat("tenant '", tenant, "' runs its quota of max_concurrent_calls=",
                                                     t.quota.max_concurrent_calls,
                                                     " running calls already: retry when one ends"));
  }
  ++t.running;
  return absl::OkStatus();
}

void TenantLimiter::EndCall(const std::string& tenant) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = tenants_.find(tenant);
  if (it != tenants_.end() && it->second.running > 0) --it->second.running;
}

TenantLimiter::Clock::duration TenantLimiter::Reserve(const std::string& tenant, int64_t tokens, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = tenants_.find(tenant);
  if (it == tenants_.end() || it->second.quota.tokens_per_second == 0) return Clock::duration::zero();
  Tenant& t = it->second;
  const double rate = static_cast<double>(t.quota.tokens_per_second);
  const double elapsed = std::chrono::duration<double>(now - t.refilled).count();
  if (elapsed > 0) {
    t.bucket = std::min(rate, t.bucket + elapsed * rate);
    t.refilled = now;
  }
  t.bucket = std::max(t.bucket - static_cast<double>(tokens), -rate * kMaxDebtSeconds);
  if (t.bucket >= 0) return Clock::duration::zero();
  const double wait = -t.bucket / rate;
  if (metrics_) metrics_->Throttled(tenant, wait);
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(wait));
}

void TenantLimiter::Refund(const std::string& tenant, int64_t tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = tenants_.find(tenant);
  if (it == tenants_.end() || it->second.quota.tokens_per_second == 0) return;
  Tenant& t = it->second;
  t.bucket = std::min(static_cast<double>(t.quota.tokens_per_second), t.bucket + static_cast<double>(tokens));
}

}  // namespace trams::server
