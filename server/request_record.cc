#include "server/request_record.h"

#include <atomic>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/metrics.h"
#include "server/scoped_id.h"
#include "server/status_convert.h"

namespace trams::server {
namespace {

std::atomic<LogLevel> request_level{LogLevel::kInfo};

// 64 random bits as 16 hex digits: unique enough to find one call in a day of logs.
std::string NewRequestId() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrFormat("%016x", rng());
}

std::string RequestIdOf(const grpc::CallbackServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find(kRequestIdMetadata);
  if (it != md.end()) {
    const std::string_view sent(it->second.data(), it->second.size());
    if (IsUsableRequestId(sent)) return std::string(sent);
  }
  return NewRequestId();
}

// Failures that are the server's fault, whatever the request log's level.
bool IsServerFault(absl::StatusCode code) {
  return code == absl::StatusCode::kInternal || code == absl::StatusCode::kUnknown ||
         code == absl::StatusCode::kDataLoss;
}

}  // namespace

void SetRequestLogLevel(LogLevel level) { request_level = level; }

bool IsUsableRequestId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == ':' || c == '-';
    if (!ok) return false;
  }
  return true;
}

RequestRecord::RequestRecord(grpc::CallbackServerContext* ctx, const char* method, Metrics* metrics)
    : id_(RequestIdOf(ctx)), method_(method), metrics_(metrics), ctx_(ctx), start_(std::chrono::steady_clock::now()) {
  ctx->AddInitialMetadata(kRequestIdMetadata, id_);
}

void RequestRecord::set_session(absl::string_view scoped_id) { session_ = std::string(BareSessionId(scoped_id)); }

grpc::Status RequestRecord::Finish(const absl::Status& status) {
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const std::string code = absl::StatusCodeToString(status.code());
  if (metrics_ != nullptr) metrics_->RequestDone(method_, code, seconds);
  const LogLevel level = IsServerFault(status.code()) ? LogLevel::kError : request_level.load();
  if (LogEnabled(level)) {
    LogFields fields{{"request_id", id_}, {"method", method_}, {"code", code}};
    if (!tenant_.empty()) fields.emplace_back("tenant", tenant_);
    if (!session_.empty()) fields.emplace_back("session", session_);
    if (tokens_ > 0) fields.emplace_back("tokens", tokens_);
    fields.emplace_back("duration_ms", seconds * 1e3);
    fields.emplace_back("peer", ctx_->peer());
    if (!status.ok()) fields.emplace_back("error", std::string(status.message()));
    Log(level, "request", fields);
  }
  if (status.ok()) return grpc::Status::OK;
  return ToGrpcStatus(absl::Status(status.code(), absl::StrCat(status.message(), " [request ", id_, "]")));
}

}  // namespace trams::server
