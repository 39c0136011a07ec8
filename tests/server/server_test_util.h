// Helpers for the end-to-end server tests: an in-process ServerApp on a loopback port, a real gRPC
// channel and stub, and blocking wrappers around the streaming calls. Every call carries a deadline so
// that a server that never answers fails the test instead of hanging it.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "server/server_app.h"
#include "trams/v1/trams.grpc.pb.h"

namespace trams::server::test {

namespace v1 = ::trams::v1;

// A bound on every RPC the tests make: far above what any call needs, so only a hang reaches it.
inline constexpr std::chrono::seconds kCallTimeout{20};

// gmock is not linked: a substring check with a readable failure.
inline ::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

inline std::string ModelDir(const std::string& name) {
  return std::string(TRAMS_TEST_DATA_DIR) + "/golden/models/" + name;
}

inline const std::string& SampleText() {
  static const std::string* text = [] {
    std::ifstream in(std::string(TRAMS_TEST_DATA_DIR) + "/data/sample_excerpt.txt", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return new std::string(ss.str());
  }();
  return *text;
}

// `len` bytes of the sample text from byte `from`.
inline std::string Text(size_t from, size_t len) { return SampleText().substr(from, len); }

inline std::vector<int32_t> Bytes(const std::string& s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

inline ServerOptions TestOptions(const std::string& model) {
  ServerOptions o;
  o.model_dir = ModelDir(model);
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "";
  o.device.threads = 1;
  // TRAMS_TEST_DEVICE=emulated|cuda runs every server test over the CUDA orchestration path (ctest
  // registers the server tests once per device).
  if (const char* device = std::getenv("TRAMS_TEST_DEVICE"); device != nullptr && *device != 0) o.device.device = device;
  else o.device.device = "cpu";
  o.limits.idle_ttl_seconds = 0;
  return o;
}

struct TestServer {
  std::unique_ptr<ServerApp> app;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::TramsService::Stub> stub;

  std::string address() const { return "127.0.0.1:" + std::to_string(app->grpc_port()); }
};

inline std::unique_ptr<TestServer> StartServer(const ServerOptions& options) {
  absl::StatusOr<std::unique_ptr<ServerApp>> app = ServerApp::Start(options);
  if (!app.ok()) {
    ADD_FAILURE() << "ServerApp::Start: " << app.status();
    return nullptr;
  }
  auto server = std::make_unique<TestServer>();
  server->app = std::move(*app);
  server->channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  server->stub = v1::TramsService::NewStub(server->channel);
  return server;
}

inline void SetDeadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() + kCallTimeout);
}

// An error message without the " [request ID]" every failed call's message ends in (server/request_record.h):
// what stays the same from one call to the next. Empty when the suffix is missing.
inline std::string WithoutRequestId(const std::string& message) {
  const size_t at = message.rfind(" [request ");
  if (at == std::string::npos || message.back() != ']') return "";
  return message.substr(0, at);
}

inline std::string Describe(const grpc::Status& s) {
  return "code " + std::to_string(static_cast<int>(s.error_code())) + ": " + s.error_message();
}

// ---- unary calls ------------------------------------------------------------------------------

inline v1::MemorySettings Trams(int mem_len, int topk, int remain) {
  v1::MemorySettings m;
  m.set_mode(v1::MEMORY_MODE_TRAMS);
  m.set_mem_len(mem_len);
  m.set_topk(topk);
  m.set_remain(remain);
  return m;
}

inline grpc::Status GetModelInfo(v1::TramsService::Stub* stub, v1::ModelInfo* out) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  return stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), out);
}

inline grpc::Status CreateSession(v1::TramsService::Stub* stub, const v1::CreateSessionRequest& req, v1::Session* out) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  return stub->CreateSession(&ctx, req, out);
}

inline grpc::Status CreateSession(v1::TramsService::Stub* stub, const std::string& id, const v1::MemorySettings& memory,
                                  int segment_len, v1::Session* out = nullptr) {
  v1::CreateSessionRequest req;
  req.set_session_id(id);
  *req.mutable_memory() = memory;
  req.set_segment_len(segment_len);
  v1::Session ignored;
  return CreateSession(stub, req, out ? out : &ignored);
}

inline grpc::Status GetSession(v1::TramsService::Stub* stub, const std::string& id, v1::Session* out) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::GetSessionRequest req;
  req.set_session_id(id);
  return stub->GetSession(&ctx, req, out);
}

inline grpc::Status DeleteSession(v1::TramsService::Stub* stub, const std::string& id) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::DeleteSessionRequest req;
  req.set_session_id(id);
  v1::DeleteSessionResponse resp;
  return stub->DeleteSession(&ctx, req, &resp);
}

inline grpc::Status Explain(v1::TramsService::Stub* stub, const std::string& id, v1::ExplainSelectionResponse* out) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::ExplainSelectionRequest req;
  req.set_session_id(id);
  return stub->ExplainSelection(&ctx, req, out);
}

inline int ListCount(v1::TramsService::Stub* stub) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::ListSessionsResponse resp;
  grpc::Status s = stub->ListSessions(&ctx, v1::ListSessionsRequest(), &resp);
  EXPECT_TRUE(s.ok()) << Describe(s);
  return resp.sessions_size();
}

// The session once no call holds it (a finished call may release it a moment after the client saw its end).
inline v1::Session WaitIdle(v1::TramsService::Stub* stub, const std::string& id) {
  v1::Session s;
  const auto give_up = std::chrono::steady_clock::now() + kCallTimeout;
  for (;;) {
    grpc::Status st = GetSession(stub, id, &s);
    EXPECT_TRUE(st.ok()) << Describe(st);
    if (!st.ok() || !s.busy()) return s;
    if (std::chrono::steady_clock::now() > give_up) {
      ADD_FAILURE() << "session '" << id << "' stays busy";
      return s;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// A session's pool bytes as CreateSession reports them, from a throwaway server (0 on failure).
inline int64_t ReportedPoolBytes(const ServerOptions& options, const v1::MemorySettings& memory, int segment_len) {
  auto probe = StartServer(options);
  if (probe == nullptr) return 0;
  v1::Session s;
  const grpc::Status st = CreateSession(probe->stub.get(), "probe", memory, segment_len, &s);
  EXPECT_TRUE(st.ok()) << Describe(st);
  return s.pool_bytes();
}

// What a bad call must not change.
struct SessionState {
  int64_t position = -1;
  int64_t tokens_scored = -1;
  double nll_sum = 0;
  int pool_tokens = -1;
  int64_t pool_bytes = -1;
  bool operator==(const SessionState&) const = default;
};

inline std::ostream& operator<<(std::ostream& os, const SessionState& s) {
  return os << "{position " << s.position << ", tokens_scored " << s.tokens_scored << ", nll_sum " << s.nll_sum
            << ", pool_tokens " << s.pool_tokens << ", pool_bytes " << s.pool_bytes << "}";
}

inline SessionState StateOf(const v1::Session& s) {
  return {s.position(), s.tokens_scored(), s.nll_sum(), s.pool_tokens(), s.pool_bytes()};
}

inline SessionState StateOf(v1::TramsService::Stub* stub, const std::string& id) { return StateOf(WaitIdle(stub, id)); }

// ---- Score ------------------------------------------------------------------------------------

struct ScoreResult {
  grpc::Status status;
  std::vector<v1::ScoreResponse> responses;
  std::vector<v1::TokenScore> tokens;  // every token of every response, in order

  // Log-probs by token; NaN where the server left it unset.
  std::vector<float> logprobs() const {
    std::vector<float> out;
    for (const auto& t : tokens) out.push_back(t.has_logprob() ? t.logprob() : std::nanf(""));
    return out;
  }
  std::vector<int32_t> ids() const {
    std::vector<int32_t> out;
    for (const auto& t : tokens) out.push_back(t.id());
    return out;
  }
  int64_t end_position() const { return responses.empty() ? -1 : responses.back().position(); }
};

inline v1::ScoreRequest TextChunk(const std::string& text) {
  v1::ScoreRequest r;
  r.set_text(text);
  return r;
}

inline v1::ScoreRequest IdChunk(const std::vector<int32_t>& ids) {
  v1::ScoreRequest r;
  for (int32_t id : ids) r.mutable_ids()->add_ids(id);
  return r;
}

// `text` as chunks of `chunk` bytes (0: one chunk); the first names the session.
inline std::vector<v1::ScoreRequest> TextRequests(const std::string& session, const std::string& text,
                                                  size_t chunk = 0) {
  std::vector<v1::ScoreRequest> reqs;
  if (chunk == 0) chunk = text.size();
  for (size_t i = 0; i < text.size(); i += chunk) reqs.push_back(TextChunk(text.substr(i, chunk)));
  if (reqs.empty()) reqs.emplace_back();
  reqs.front().set_session_id(session);
  return reqs;
}

inline std::vector<v1::ScoreRequest> IdRequests(const std::string& session, const std::vector<int32_t>& ids,
                                                size_t chunk = 0) {
  std::vector<v1::ScoreRequest> reqs;
  if (chunk == 0) chunk = ids.size();
  for (size_t i = 0; i < ids.size(); i += chunk) {
    reqs.push_back(IdChunk(std::vector<int32_t>(ids.begin() + i, ids.begin() + std::min(ids.size(), i + chunk))));
  }
  if (reqs.empty()) reqs.emplace_back();
  reqs.front().set_session_id(session);
  return reqs;
}

inline void Collect(const v1::ScoreResponse& r, ScoreResult* out) {
  out->responses.push_back(r);
  for (const auto& t : r.tokens()) out->tokens.push_back(t);
}

// One Score call: writes every request (while a second thread reads the answers), half-closes, finishes.
inline ScoreResult RunScore(v1::TramsService::Stub* stub, const std::vector<v1::ScoreRequest>& reqs,
                            grpc::ClientContext* ctx_in = nullptr) {
  grpc::ClientContext own;
  grpc::ClientContext* ctx = ctx_in ? ctx_in : &own;
  if (!ctx_in) SetDeadline(ctx);
  ScoreResult result;
  auto stream = stub->Score(ctx);
  std::thread reader([&] {
    v1::ScoreResponse r;
    while (stream->Read(&r)) Collect(r, &result);
  });
  for (const auto& req : reqs) {
    if (!stream->Write(req)) break;  // the server ended the call
  }
  stream->WritesDone();
  reader.join();
  result.status = stream->Finish();
  return result;
}

inline ScoreResult ScoreText(v1::TramsService::Stub* stub, const std::string& session, const std::string& text,
                             size_t chunk = 0) {
  return RunScore(stub, TextRequests(session, text, chunk));
}

inline ScoreResult ScoreIds(v1::TramsService::Stub* stub, const std::string& session, const std::vector<int32_t>& ids,
                            size_t chunk = 0) {
  return RunScore(stub, IdRequests(session, ids, chunk));
}

// A Score call driven step by step (for calls that must be interrupted or overlapped).
class ScoreStream {
 public:
  explicit ScoreStream(v1::TramsService::Stub* stub) {
    SetDeadline(&ctx_);
    stream_ = stub->Score(&ctx_);
  }
  grpc::ClientContext& context() { return ctx_; }
  bool Write(const v1::ScoreRequest& r) { return stream_->Write(r); }
  // Blocks for the next answer; false at the end of the call.
  bool ReadOne() {
    v1::ScoreResponse r;
    if (!stream_->Read(&r)) return false;
    Collect(r, &result_);
    return true;
  }
  // Half-closes (unless `cancelled`), reads the rest, finishes.
  ScoreResult Finish(bool half_close = true) {
    if (half_close) stream_->WritesDone();
    while (ReadOne()) {
    }
    result_.status = stream_->Finish();
    return result_;
  }
  const ScoreResult& so_far() const { return result_; }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ScoreRequest, v1::ScoreResponse>> stream_;
  ScoreResult result_;
};

// ---- Generate ---------------------------------------------------------------------------------

struct GenerateResult {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::vector<int64_t> positions;
  std::string text;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  int64_t last_position = -1;
};

inline GenerateResult RunGenerate(v1::TramsService::Stub* stub, const v1::GenerateRequest& req,
                                  grpc::ClientContext* ctx_in = nullptr) {
  grpc::ClientContext own;
  grpc::ClientContext* ctx = ctx_in ? ctx_in : &own;
  if (!ctx_in) SetDeadline(ctx);
  GenerateResult result;
  auto reader = stub->Generate(ctx, req);
  v1::GenerateResponse r;
  while (reader->Read(&r)) {
    for (const auto& t : r.tokens()) {
      result.ids.push_back(t.id());
      result.positions.push_back(t.position());
      result.text += t.text();
    }
    result.last_position = r.position();
    if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) result.finish = r.finish_reason();
  }
  result.status = reader->Finish();
  return result;
}

inline v1::GenerateRequest MakeGenerate(const std::string& session, int max_tokens, float temperature) {
  v1::GenerateRequest req;
  req.set_session_id(session);
  req.set_max_tokens(max_tokens);
  req.set_temperature(temperature);
  return req;
}

// ---- moving sessions: ExportSession, ImportSession, ForkSession -------------------------------

struct Exported {
  grpc::Status status;
  std::string blob;
  int chunks = 0;
};

inline Exported Export(v1::TramsService::Stub* stub, const std::string& id) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::ExportSessionRequest req;
  req.set_session_id(id);
  auto reader = stub->ExportSession(&ctx, req);
  Exported out;
  v1::SessionChunk chunk;
  while (reader->Read(&chunk)) {
    out.blob += chunk.data();
    ++out.chunks;
    EXPECT_GT(chunk.total_bytes(), 0);
  }
  out.status = reader->Finish();
  return out;
}

inline grpc::Status Import(v1::TramsService::Stub* stub, const std::string& blob, const std::string& id, bool replace = false,
                    v1::Session* out = nullptr, size_t chunk = 100000) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::Session resp;
  auto writer = stub->ImportSession(&ctx, &resp);
  for (size_t at = 0; at < blob.size() || at == 0; at += chunk) {
    v1::ImportSessionRequest req;
    if (at == 0) {
      req.set_session_id(id);
      req.set_replace(replace);
    }
    req.set_data(blob.substr(at, chunk));
    if (!writer->Write(req)) break;
    if (blob.empty()) break;
  }
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  if (out) *out = resp;
  return st;
}

inline grpc::Status Fork(v1::TramsService::Stub* stub, const std::string& id, const std::string& new_id, v1::Session* out) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::ForkSessionRequest req;
  req.set_session_id(id);
  req.set_new_session_id(new_id);
  return stub->ForkSession(&ctx, req, out);
}

}  // namespace trams::server::test
