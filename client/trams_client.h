// TramsClient: a thin synchronous C++ wrapper over the generated trams.v1.TramsService stub.
// It owns no model logic: it fills session ids (field and `x-session-id` metadata), runs the
// streaming calls to completion and turns grpc::Status into absl::Status (codes 1:1, same message).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "trams/v1/trams.grpc.pb.h"

namespace trams::client {

// The metadata key the server (and a load balancer hashing on sessions) reads the session id from.
inline constexpr char kSessionIdMetadata[] = "x-session-id";

// grpc::StatusCode and absl::StatusCode share their numbering (both are the canonical codes),
// so the conversion keeps the code and the message; OK maps to an OK status.
absl::Status FromGrpcStatus(const grpc::Status& status);

struct ClientOptions {
  // Per-call deadline; absl::InfiniteDuration() = none. Applies to every call, streams included.
  absl::Duration timeout = absl::InfiniteDuration();
  // Sent as `x-session-id` on every call that names a session. Turning it off is for tests only.
  bool send_session_metadata = true;
  // TLS (server/README.md, "Security"): PEM files. With tls_ca the channel speaks TLS and trusts that CA;
  // tls_cert + tls_key present a client certificate (mutual TLS). Empty: plaintext.
  std::string tls_ca, tls_cert, tls_key;
  // Sent as `authorization: Bearer <api_key>` on every call (a server with --auth_keys). Empty: none.
  std::string api_key;
};

// Options of one Score call (the first ScoreRequest of the stream carries them).
struct ScoreParams {
  std::optional<int64_t> expected_position;  // FAILED_PRECONDITION if the session is elsewhere
  int32_t alternatives = 0;                  // top-k alternatives per token (0-20)
  bool entropy = false;                      // entropy of each predicting distribution
};

// What a finished Generate call reports besides its tokens.
struct GenerateSummary {
  int64_t position = 0;  // session position after the call
  int64_t tokens = 0;    // tokens received
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
};

// Thread safety: a TramsClient may be shared by threads; each method is one independent RPC.
// Callbacks run on the calling thread, except ChunkSource (see ScoreText).
class TramsClient {
 public:
  // Returns the next chunk to send, std::nullopt at the end of the input, or an error (which
  // cancels the call and is what ScoreText returns). Empty chunks are skipped.
  using ChunkSource = std::function<absl::StatusOr<std::optional<std::string>>()>;
  // Returning a non-OK status cancels the call; ScoreText/Generate then return that status.
  using ScoreCallback = std::function<absl::Status(const v1::ScoreResponse&)>;
  using TokenCallback = std::function<absl::Status(const v1::TokenScore&)>;

  explicit TramsClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options = {});
  // A channel to `target` ("host:port", or any gRPC target URI): plaintext (h2c), or TLS with
  // options.tls_ca. INVALID_ARGUMENT when a TLS file cannot be read.
  static absl::StatusOr<std::unique_ptr<TramsClient>> Connect(const std::string& target, ClientOptions options = {});

  absl::StatusOr<v1::ModelInfo> GetModelInfo();
  // grpc.health.v1.Health/Check of `service` ("" = the whole server): SERVING, NOT_SERVING, UNKNOWN or
  // SERVICE_UNKNOWN; an error when the call fails (unreachable, deadline: at most 10 s without a timeout).
  absl::StatusOr<std::string> CheckHealth(const std::string& service);

  // request.session_id may be empty (the server picks one); memory/segment_len unset = defaults.
  absl::StatusOr<v1::Session> CreateSession(const v1::CreateSessionRequest& request);
  absl::StatusOr<v1::Session> GetSession(const std::string& session_id);
  absl::StatusOr<std::vector<v1::Session>> ListSessions();
  absl::Status DeleteSession(const std::string& session_id);

  // Streams the chunks from `next_chunk` as one bidi Score call and calls `on_response` for each
  // ScoreResponse as it arrives (one per segment). `next_chunk` runs on a writer thread owned by
  // this call, concurrently with `on_response`, so that a long input never waits for the reader.
  // Returns the last ScoreResponse with its tokens cleared (running totals over the call), or a
  // default message if the server sent none (empty input).
  absl::StatusOr<v1::ScoreResponse> ScoreText(const std::string& session_id, ChunkSource next_chunk,
                                              const ScoreParams& params,
                                              const ScoreCallback& on_response);
  // Convenience: `text` cut into chunks of `chunk_bytes` (>= 1).
  absl::StatusOr<v1::ScoreResponse> ScoreText(const std::string& session_id, std::string_view text,
                                              size_t chunk_bytes, const ScoreParams& params,
                                              const ScoreCallback& on_response);

  // request.session_id is overwritten with `session_id`. Calls `on_token` per generated token
  // (a prompt is consumed silently).
  absl::StatusOr<GenerateSummary> Generate(const std::string& session_id,
                                           v1::GenerateRequest request,
                                           const TokenCallback& on_token);

  absl::StatusOr<v1::ExplainSelectionResponse> ExplainSelection(const std::string& session_id);

  // The session's snapshot (ExportSession, every chunk joined); the session is unchanged.
  absl::StatusOr<std::string> ExportSession(const std::string& session_id);
  // A session from a snapshot (ImportSession, sent in chunks of 1 MiB). `session_id` empty: the snapshot's.
  absl::StatusOr<v1::Session> ImportSession(const std::string& snapshot, const std::string& session_id, bool replace);
  // A copy of `session_id` as `new_session_id` (empty: the server picks).
  absl::StatusOr<v1::Session> ForkSession(const std::string& session_id, const std::string& new_session_id);

  v1::TramsService::Stub& stub() { return *stub_; }

 private:
  // A context with the deadline and, when `session_id` is not empty, the session metadata.
  std::unique_ptr<grpc::ClientContext> NewContext(const std::string& session_id) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::TramsService::Stub> stub_;
  ClientOptions options_;
};

}  // namespace trams::client
