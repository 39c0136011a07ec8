// trams.v1.TramsService with the gRPC callback API: the protocol layer. Every RPC is defined in
// lm_service.cc; the unary ones answer from the session manager through proto_convert.h, the streaming
// ones hand the call to its reactor (score_call.cc, generate_call.cc, transfer_calls.cc).
//
// Every Score/Generate call is one transaction on its session: the call holds the session from start
// to end (later calls on it wait, in order), each segment's forward is atomic, and when the call ends
// in anything but OK (bad input midway, deadline, client cancel, shutdown) the session is rolled back
// to exactly where it was when the call started. Results streamed before the failure are void.
#pragma once

#include <memory>
#include <optional>

#include "engine/engine.h"
#include "engine/tokenizer.h"
#include "server/auth_keys.h"
#include "server/call_env.h"
#include "server/scheduler.h"
#include "server/server_options.h"
#include "server/session_manager.h"
#include "server/tenant_limiter.h"
#include "server/text_codec.h"
#include "trams/v1/trams.grpc.pb.h"

namespace trams::server {

class Metrics;

class LmService final : public v1::TramsService::CallbackService {
 public:
  LmService(engine::Engine* model, absl::StatusOr<std::unique_ptr<engine::Tokenizer>> tokenizer,
            SessionManager* sessions, Scheduler* scheduler, Metrics* metrics, const ServerOptions& options);

  // From now on every RPC needs a key of `keys`, and its tenant's quotas hold (before Start serves: not
  // thread-safe against calls).
  void RequireKeys(AuthKeys keys);
  // From now on a call without an API key is the tenant its verified client certificate's CN names
  // (mutual TLS: the client CA vouches for the name); one without a usable CN is UNAUTHENTICATED.
  void TenantsFromCertificates() { cert_tenants_ = true; }

  // New calls get UNAVAILABLE from now on; running calls continue.
  void StartDraining() { calls_.StartDraining(); }
  int running_calls() const { return calls_.running(); }

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
  grpc::ServerWriteReactor<v1::SessionChunk>* ExportSession(grpc::CallbackServerContext* ctx,
                                                            const v1::ExportSessionRequest* req) override;
  grpc::ServerReadReactor<v1::ImportSessionRequest>* ImportSession(grpc::CallbackServerContext* ctx,
                                                                   v1::Session* resp) override;
  grpc::ServerUnaryReactor* ForkSession(grpc::CallbackServerContext* ctx, const v1::ForkSessionRequest* req,
                                        v1::Session* resp) override;

 private:
  // The caller's tenant (its API key's, else its certificate's with TenantsFromCertificates; "" with
  // neither configured), or UNAUTHENTICATED: the first thing every RPC does.
  absl::StatusOr<std::string> Authenticate(const grpc::CallbackServerContext* ctx) const;

  engine::Engine* model_;
  std::optional<AuthKeys> keys_;
  bool cert_tenants_ = false;
  std::unique_ptr<TenantLimiter> limiter_;  // with keys
  TextCodec codec_;
  SessionManager* sessions_;
  Metrics* metrics_;
  ServerOptions options_;
  CallTracker calls_;
  MemoryShareSampler share_;
  CallEnv env_;  // what the streaming calls use of the above
};

}  // namespace trams::server
