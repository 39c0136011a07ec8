// What every RPC leaves behind, made in one place: a request id (the client's x-request-id when it sends a
// usable one, else a random one), returned as x-request-id metadata and appended to every error message so
// that a user's report finds the server's log line; the latency histogram; and one JSON log line with the
// method, tenant, session, status code, tokens and duration.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/log.h"

namespace trams::server {

class Metrics;

// The metadata key of the request id, in both directions.
inline constexpr char kRequestIdMetadata[] = "x-request-id";

// The level of the request lines (--request_log_level; kOff: none). Server faults (INTERNAL, UNKNOWN,
// DATA_LOSS) are logged at error whatever this says.
void SetRequestLogLevel(LogLevel level);

// 1-64 of [A-Za-z0-9._:-]: what a client's x-request-id must be to be kept (else the server picks one).
bool IsUsableRequestId(std::string_view id);

class RequestRecord {
 public:
  // Picks the id and adds it to the call's initial metadata (nothing has been sent yet).
  RequestRecord(grpc::CallbackServerContext* ctx, const char* method, Metrics* metrics);
  RequestRecord(const RequestRecord&) = delete;
  RequestRecord& operator=(const RequestRecord&) = delete;

  const std::string& id() const { return id_; }
  void set_tenant(std::string tenant) { tenant_ = std::move(tenant); }
  // The server's (scoped) id; the log shows the id the client knows.
  void set_session(absl::string_view scoped_id);
  void add_tokens(int64_t n) { tokens_ += n; }

  // Records the latency, writes the log line and returns what the client gets: `status`, its message ending
  // in " [request ID]" when it is not OK. Call once, before the call's Finish (it reads the context's peer).
  grpc::Status Finish(const absl::Status& status);

 private:
  const std::string id_;
  const char* method_;
  Metrics* metrics_;  // may be null
  const grpc::CallbackServerContext* ctx_;  // the peer, read only when the line is written
  std::string tenant_;
  std::string session_;
  int64_t tokens_ = 0;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace trams::server
