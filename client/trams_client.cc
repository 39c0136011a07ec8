// TramsClient: unary calls, the bidi Score stream (writer thread + reading caller) and the
// server-streaming Generate call, each mapped to absl::Status.
#include "client/trams_client.h"

#include <fstream>
#include <sstream>

#include <algorithm>
#include <atomic>
#include <future>
#include <thread>
#include <utility>

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>

#include "absl/time/clock.h"

namespace trams::client {

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // Both enums are the canonical codes 0..16 (absl/status/status.h says so of its own values).
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

TramsClient::TramsClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : channel_(std::move(channel)), stub_(v1::TramsService::NewStub(channel_)), options_(options) {}

namespace {
absl::StatusOr<std::string> ReadPem(const char* what, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(std::string(what) + " " + path + ": cannot be read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

absl::StatusOr<std::unique_ptr<TramsClient>> TramsClient::Connect(const std::string& target, ClientOptions options) {
  if (options.tls_ca.empty()) {
    if (!options.tls_cert.empty() || !options.tls_key.empty()) {
      return absl::InvalidArgumentError("a client certificate needs TLS: give the server's CA too (--tls_ca)");
    }
    return std::make_unique<TramsClient>(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()), options);
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("a client certificate needs both --tls_cert and --tls_key");
  }
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> ca = ReadPem("--tls_ca", options.tls_ca);
  if (!ca.ok()) return ca.status();
  ssl.pem_root_certs = *ca;
  if (!options.tls_cert.empty()) {
    absl::StatusOr<std::string> cert = ReadPem("--tls_cert", options.tls_cert);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem("--tls_key", options.tls_key);
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
  }
  return std::make_unique<TramsClient>(grpc::CreateChannel(target, grpc::SslCredentials(ssl)), options);
}

std::unique_ptr<grpc::ClientContext> TramsClient::NewContext(const std::string& session_id) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!options_.api_key.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.api_key);
  if (options_.timeout != absl::InfiniteDuration()) {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  }
  if (options_.send_session_metadata && !session_id.empty()) {
    ctx->AddMetadata(kSessionIdMetadata, session_id);
  }
  return ctx;
}

absl::StatusOr<v1::ModelInfo> TramsClient::GetModelInfo() {
  auto ctx = NewContext("");
  v1::ModelInfo info;
  grpc::Status st = stub_->GetModelInfo(ctx.get(), v1::GetModelInfoRequest(), &info);
  if (!st.ok()) return FromGrpcStatus(st);
  return info;
}

namespace {
// grpc.health.v1 is two one-field messages; encoded by hand, so the client links no health stubs.
// HealthCheckRequest: field 1 (service, length-delimited). HealthCheckResponse: field 1 (status, varint).
std::string EncodeHealthRequest(const std::string& service) {
  if (service.empty()) return "";
  std::string out(1, '\x0a');
  for (size_t n = service.size(); ; n >>= 7) {
    out += static_cast<char>((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
    if (n <= 0x7f) break;
  }
  return out + service;
}
std::string HealthStatusName(const std::string& response) {
  int status = 0;  // proto3: an absent field is UNKNOWN
  if (response.size() == 2 && response[0] == '\x08') status = static_cast<unsigned char>(response[1]);
  else if (!response.empty()) return "UNKNOWN";
  switch (status) {
    case 1: return "SERVING";
    case 2: return "NOT_SERVING";
    case 3: return "SERVICE_UNKNOWN";
    default: return "UNKNOWN";
  }
}
}  // namespace

absl::StatusOr<std::string> TramsClient::CheckHealth(const std::string& service) {
  auto ctx = NewContext("");
  if (options_.timeout == absl::InfiniteDuration()) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  }
  grpc::GenericStub stub(channel_);
  grpc::Slice slice(EncodeHealthRequest(service));
  grpc::ByteBuffer request(&slice, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(ctx.get(), "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  if (grpc::Status st = done.get_future().get(); !st.ok()) return FromGrpcStatus(st);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::DataLossError("unreadable health check response");
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return HealthStatusName(bytes);
}

absl::StatusOr<v1::Session> TramsClient::CreateSession(const v1::CreateSessionRequest& request) {
  auto ctx = NewContext(request.session_id());
  v1::Session session;
  grpc::Status st = stub_->CreateSession(ctx.get(), request, &session);
  if (!st.ok()) return FromGrpcStatus(st);
  return session;
}

absl::StatusOr<v1::Session> TramsClient::GetSession(const std::string& session_id) {
  auto ctx = NewContext(session_id);
  v1::GetSessionRequest request;
  request.set_session_id(session_id);
  v1::Session session;
  grpc::Status st = stub_->GetSession(ctx.get(), request, &session);
  if (!st.ok()) return FromGrpcStatus(st);
  return session;
}

absl::StatusOr<std::vector<v1::Session>> TramsClient::ListSessions() {
  auto ctx = NewContext("");
  v1::ListSessionsResponse response;
  grpc::Status st = stub_->ListSessions(ctx.get(), v1::ListSessionsRequest(), &response);
  if (!st.ok()) return FromGrpcStatus(st);
  return std::vector<v1::Session>(response.sessions().begin(), response.sessions().end());
}

absl::Status TramsClient::DeleteSession(const std::string& session_id) {
  auto ctx = NewContext(session_id);
  v1::DeleteSessionRequest request;
  request.set_session_id(session_id);
  v1::DeleteSessionResponse response;
  return FromGrpcStatus(stub_->DeleteSession(ctx.get(), request, &response));
}

absl::StatusOr<std::string> TramsClient::ExportSession(const std::string& session_id) {
  auto ctx = NewContext(session_id);
  v1::ExportSessionRequest request;
  request.set_session_id(session_id);
  auto reader = stub_->ExportSession(ctx.get(), request);
  std::string snapshot;
  v1::SessionChunk chunk;
  while (reader->Read(&chunk)) snapshot += chunk.data();
  grpc::Status st = reader->Finish();
  if (!st.ok()) return FromGrpcStatus(st);
  return snapshot;
}

absl::StatusOr<v1::Session> TramsClient::ImportSession(const std::string& snapshot, const std::string& session_id,
                                                       bool replace) {
  constexpr size_t kChunk = size_t{1} << 20;
  auto ctx = NewContext(session_id);
  v1::Session session;
  auto writer = stub_->ImportSession(ctx.get(), &session);
  for (size_t at = 0; at < snapshot.size(); at += kChunk) {
    v1::ImportSessionRequest request;
    if (at == 0) {
      request.set_session_id(session_id);
      request.set_replace(replace);
    }
    request.set_data(snapshot.substr(at, kChunk));
    if (!writer->Write(request)) break;  // the server ended the call: Finish says why
  }
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  if (!st.ok()) return FromGrpcStatus(st);
  return session;
}

absl::StatusOr<v1::Session> TramsClient::ForkSession(const std::string& session_id, const std::string& new_session_id) {
  auto ctx = NewContext(session_id);
  v1::ForkSessionRequest request;
  request.set_session_id(session_id);
  request.set_new_session_id(new_session_id);
  v1::Session session;
  grpc::Status st = stub_->ForkSession(ctx.get(), request, &session);
  if (!st.ok()) return FromGrpcStatus(st);
  return session;
}

absl::StatusOr<v1::ScoreResponse> TramsClient::ScoreText(const std::string& session_id,
                                                         ChunkSource next_chunk,
                                                         const ScoreParams& params,
                                                         const ScoreCallback& on_response) {
  auto ctx = NewContext(session_id);
  std::unique_ptr<grpc::ClientReaderWriter<v1::ScoreRequest, v1::ScoreResponse>> stream =
      stub_->Score(ctx.get());

  // The writer runs on its own thread: the server answers segment by segment while the input is
  // still arriving, and a caller that only wrote would stall once flow control fills up.
  std::atomic<bool> stop_writing{false};
  absl::Status source_status;  // written by the writer thread, read after join()
  std::thread writer([&] {
    v1::ScoreRequest request;
    request.set_session_id(session_id);
    if (params.expected_position.has_value()) {
      request.set_expected_position(*params.expected_position);
    }
    request.mutable_options()->set_alternatives(params.alternatives);
    request.mutable_options()->set_entropy(params.entropy);
    bool header_sent = false;
    while (!stop_writing.load(std::memory_order_relaxed)) {
      absl::StatusOr<std::optional<std::string>> chunk = next_chunk();
      if (!chunk.ok()) {
        source_status = chunk.status();
        ctx->TryCancel();
        return;
      }
      if (!chunk->has_value()) break;
      if ((*chunk)->empty()) continue;
      request.set_text(std::move(**chunk));
      if (!stream->Write(request)) return;  // the call is over; Finish() says why
      header_sent = true;
      request.Clear();  // later messages carry only their chunk
    }
    // An empty input still names the session, so the server can answer (or reject) the call.
    if (!header_sent && !stop_writing.load() && !stream->Write(request)) return;
    stream->WritesDone();
  });

  absl::Status callback_status;
  v1::ScoreResponse response;
  v1::ScoreResponse last;
  while (stream->Read(&response)) {
    if (callback_status.ok()) {
      callback_status = on_response(response);
      if (!callback_status.ok()) {
        stop_writing = true;
        ctx->TryCancel();
      }
    }
    last.Swap(&response);
    last.clear_tokens();
  }
  stop_writing = true;
  writer.join();
  grpc::Status st = stream->Finish();
  if (!source_status.ok()) return source_status;
  if (!callback_status.ok()) return callback_status;
  if (!st.ok()) return FromGrpcStatus(st);
  return last;
}

absl::StatusOr<v1::ScoreResponse> TramsClient::ScoreText(const std::string& session_id,
                                                         std::string_view text, size_t chunk_bytes,
                                                         const ScoreParams& params,
                                                         const ScoreCallback& on_response) {
  if (chunk_bytes == 0) return absl::InvalidArgumentError("chunk_bytes must be at least 1");
  size_t offset = 0;
  ChunkSource source = [&]() -> absl::StatusOr<std::optional<std::string>> {
    if (offset >= text.size()) return std::optional<std::string>();
    size_t n = std::min(chunk_bytes, text.size() - offset);
    std::string chunk(text.substr(offset, n));
    offset += n;
    return std::optional<std::string>(std::move(chunk));
  };
  return ScoreText(session_id, std::move(source), params, on_response);
}

absl::StatusOr<GenerateSummary> TramsClient::Generate(const std::string& session_id,
                                                      v1::GenerateRequest request,
                                                      const TokenCallback& on_token) {
  request.set_session_id(session_id);
  auto ctx = NewContext(session_id);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub_->Generate(ctx.get(), request);
  GenerateSummary summary;
  absl::Status callback_status;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    summary.position = response.position();
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      summary.finish_reason = response.finish_reason();
    }
    for (const v1::TokenScore& token : response.tokens()) {
      ++summary.tokens;
      if (!callback_status.ok()) continue;
      callback_status = on_token(token);
      if (!callback_status.ok()) ctx->TryCancel();
    }
  }
  grpc::Status st = reader->Finish();
  if (!callback_status.ok()) return callback_status;
  if (!st.ok()) return FromGrpcStatus(st);
  return summary;
}

absl::StatusOr<v1::ExplainSelectionResponse> TramsClient::ExplainSelection(
    const std::string& session_id) {
  auto ctx = NewContext(session_id);
  v1::ExplainSelectionRequest request;
  request.set_session_id(session_id);
  v1::ExplainSelectionResponse response;
  grpc::Status st = stub_->ExplainSelection(ctx.get(), request, &response);
  if (!st.ok()) return FromGrpcStatus(st);
  return response;
}

}  // namespace trams::client
