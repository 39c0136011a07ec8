// trams.v1.TramsService with the gRPC callback API: proto <-> engine types, session calls, no model math.
//
// Every Score/Generate call is one transaction on its session: the call holds the session from start
// to end (later calls on it wait, in order), each segment's forward is atomic, and when the call ends
// in anything but OK (bad input midway, deadline, client cancel, shutdown) the session is rolled back
// to exactly where it was when the call started. Results streamed before the failure are void.
#pragma once

#include <atomic>
#include <memory>

#include "engine/tokenizer.h"
#include "engine/engine.h"
#include "server/scheduler.h"
#include "server/server_options.h"
#include "server/session_manager.h"
#include "trams/v1/trams.grpc.pb.h"

namespace trams::server {

class Metrics;

class LmService final : public v1::TramsService::CallbackService {
 public:
  LmService(engine::Engine* model, absl::StatusOr<std::unique_ptr<engine::Tokenizer>> tokenizer, SessionManager* sessions,
            Scheduler* scheduler, Metrics* metrics, const ServerOptions& options);

  // New calls get UNAVAILABLE from now on; running calls continue.
  void StartDraining() { draining_ = true; }
  int running_calls() const { return running_calls_.load(); }

  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx, const v1::GetModelInfoRequest* req,
                                         v1::ModelInfo* resp) override;
  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* ctx, const v1::CreateSessionRequest* req,
                                          v1::Session* resp) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* ctx, const v1::GetSessionRequest* req,
                                       v1::Session* resp) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* ctx, const v1::ListSessionsRequest* req,
                                         v1::ListSessionsResponse* resp) override;
  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* ctx, const v1::DeleteSessionRequest* req,
                                          v1::DeleteSessionResponse* resp) override;
  grpc::ServerBidiReactor<v1::ScoreRequest, v1::ScoreResponse>* Score(grpc::CallbackServerContext* ctx) override;
  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* ctx,
                                                          const v1::GenerateRequest* req) override;
  grpc::ServerUnaryReactor* ExplainSelection(grpc::CallbackServerContext* ctx,
                                             const v1::ExplainSelectionRequest* req,
                                             v1::ExplainSelectionResponse* resp) override;

  // Shared by the call reactors (lm_calls.cc).
  engine::Engine* model() const { return model_; }
  const engine::Tokenizer* tokenizer() const { return tokenizer_.ok() ? tokenizer_->get() : nullptr; }
  const absl::Status& tokenizer_status() const { return tokenizer_status_; }
  SessionManager* sessions() const { return sessions_; }
  Scheduler* scheduler() const { return scheduler_; }
  Metrics* metrics() const { return metrics_; }
  const ServerOptions& options() const { return options_; }
  bool draining() const { return draining_; }
  void CallStarted() { ++running_calls_; }
  void CallEnded() { --running_calls_; }
  // The session id of a request: the field and/or `x-session-id` metadata (they must agree).
  absl::StatusOr<std::string> SessionIdOf(grpc::CallbackServerContext* ctx, const std::string& field) const;
  std::string TokenText(int32_t id) const;
  // Token ids from text (the stable prefix only, unless `final`), consuming what it encodes from `text`.
  absl::Status Encode(std::string* text, bool final, std::vector<int32_t>* out) const;
  absl::Status CheckIds(absl::Span<const int32_t> ids) const;
  // Whether this segment samples the TRAMS memory-share statistic (every N-th segment server-wide).
  bool SampleMemoryShare();
  void RecordMemoryShare(const engine::SegmentOutput& out) const;
  // Applies a committed call's bookkeeping to its session (counters, recent ids, explanation).
  void RecordConsumed(Session* session, absl::Span<const int32_t> ids) const;

 private:
  engine::Engine* model_;
  absl::StatusOr<std::unique_ptr<engine::Tokenizer>> tokenizer_;
  absl::Status tokenizer_status_;
  SessionManager* sessions_;
  Scheduler* scheduler_;
  Metrics* metrics_;
  ServerOptions options_;
  std::atomic<bool> draining_{false};
  std::atomic<int> running_calls_{0};
  std::atomic<uint64_t> segments_{0};
};

// Fills a proto Session from a snapshot.
void ToProto(const SessionSnapshot& s, v1::Session* out);
void ToProto(const engine::TramsSettings& s, v1::MemorySettings* out);

}  // namespace trams::server
