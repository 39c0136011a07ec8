// The RPCs of trams.v1.TramsService, each in one place: unary ones answer here, streaming ones start their
// reactor (score_call.cc, generate_call.cc).
#include "server/lm_service.h"

#include <grpcpp/alarm.h>

#include <chrono>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/generate_call.h"
#include "server/metrics.h"
#include "server/proto_convert.h"
#include "server/request_record.h"
#include "server/score_call.h"
#include "server/session_id.h"
#include "server/transfer_calls.h"

namespace trams::server {
namespace {

constexpr std::chrono::seconds kDeleteWait{2};

// Finishes a unary call through its RequestRecord (latency, log line, request id).
class UnaryDone {
 public:
  UnaryDone(Metrics* metrics, grpc::CallbackServerContext* ctx, const char* method)
      : record_(ctx, method, metrics), reactor_(ctx->DefaultReactor()) {}
  grpc::ServerUnaryReactor* reactor() const { return reactor_; }
  RequestRecord& record() { return record_; }
  grpc::ServerUnaryReactor* Finish(const absl::Status& status) {
    reactor_->Finish(record_.Finish(status));
    return reactor_;
  }

 private:
  RequestRecord record_;
  grpc::ServerUnaryReactor* reactor_;
};

// A streaming call refused before it starts (authentication): answers `status` at once.
template <class Reactor>
class RefusedCall final : public Reactor {
 public:
  explicit RefusedCall(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

template <class Reactor>
Reactor* Refuse(Metrics* metrics, grpc::CallbackServerContext* ctx, const char* method, const absl::Status& status) {
  RequestRecord record(ctx, method, metrics);
  return new RefusedCall<Reactor>(record.Finish(status));
}

// The model's name: its directory's last component. Never the path (it tells a client about the host).
std::string ModelName(const std::string& model_dir) {
  std::string dir = model_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const size_t slash = dir.rfind('/');
  return slash == std::string::npos ? dir : dir.substr(slash + 1);
}

}  // namespace

LmService::LmService(engine::Engine* model, absl::StatusOr<std::unique_ptr<engine::Tokenizer>> tokenizer,
                     SessionManager* sessions, Scheduler* scheduler, Metrics* metrics, const ServerOptions& options)
    : model_(model),
      codec_(std::move(tokenizer), model->config().vocab_size),
      sessions_(sessions),
      metrics_(metrics),
      options_(options),
      share_(options.memory_share_every) {
  env_.sessions = sessions;
  env_.scheduler = scheduler;
  env_.metrics = metrics;
  env_.codec = &codec_;
  env_.options = &options_;
  env_.calls = &calls_;
  env_.share = &share_;
}

void LmService::RequireKeys(AuthKeys keys) {
  limiter_ = std::make_unique<TenantLimiter>(keys.quotas(), metrics_);
  env_.tenants = limiter_.get();
  sessions_->SetTenantQuotas(keys.quotas());
  keys_ = std::move(keys);
}

absl::StatusOr<std::string> LmService::Authenticate(const grpc::CallbackServerContext* ctx) const {
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (cert_tenants_ && it == md.end()) {
    const std::shared_ptr<const grpc::AuthContext> auth = ctx->auth_context();
    const std::vector<grpc::string_ref> cn = auth ? auth->FindPropertyValues("x509_common_name")
                                                  : std::vector<grpc::string_ref>();
    const absl::string_view name = cn.size() == 1 ? absl::string_view(cn[0].data(), cn[0].size()) : absl::string_view();
    if (IsValidTenantName(name)) return std::string(name);
    return absl::UnauthenticatedError(
        "no API key, and the client certificate's subject CN is not a tenant name (1-64 of [A-Za-z0-9_.-])");
  }
  if (!keys_.has_value()) return std::string();
  const absl::string_view value = it == md.end() ? absl::string_view() : absl::string_view(it->second.data(), it->second.size());
  return keys_->Authenticate(value);
}

grpc::ServerUnaryReactor* LmService::GetModelInfo(grpc::CallbackServerContext* ctx, const v1::GetModelInfoRequest*,
                                                  v1::ModelInfo* resp) {
  UnaryDone done(metrics_, ctx, "GetModelInfo");
  if (absl::Status a = Authenticate(ctx).status(); !a.ok()) return done.Finish(a);
  const engine::ModelConfig& c = model_->config();
  resp->set_model_dir(ModelName(options_.model_dir));
  resp->set_n_layer(c.n_layer);
  resp->set_d_model(c.d_model);
  resp->set_n_head(c.n_head);
  resp->set_d_head(c.d_head);
  resp->set_vocab_size(c.vocab_size);
  resp->set_tokenizer(codec_.tokenizer_type());
  ToProto(options_.defaults.memory, resp->mutable_default_memory());
  resp->set_default_segment_len(options_.defaults.segment_len);
  resp->set_max_segment_len(options_.limits.max_segment_len);
  resp->set_max_mem_len(options_.limits.max_mem_len);
  resp->set_device(model_->device());
  resp->set_max_message_bytes(options_.requests.max_chunk_bytes + (1 << 20));
  resp->set_max_generate_tokens(options_.requests.max_generate_tokens);
  resp->set_max_alternatives(options_.requests.max_alternatives);
  resp->set_max_sessions(options_.limits.max_sessions);
  resp->set_memory_budget_bytes(options_.limits.memory_budget_bytes);
  resp->set_max_connection_idle_seconds(options_.connections.max_idle_seconds);
  resp->set_max_connection_age_seconds(options_.connections.max_age_seconds);
  resp->set_keepalive_seconds(options_.connections.keepalive_seconds);
  return done.Finish(absl::OkStatus());
}

grpc::ServerUnaryReactor* LmService::CreateSession(grpc::CallbackServerContext* ctx,
                                                   const v1::CreateSessionRequest* req, v1::Session* resp) {
  UnaryDone done(metrics_, ctx, "CreateSession");
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return done.Finish(tenant.status());
  done.record().set_tenant(*tenant);
  if (calls_.draining()) return done.Finish(absl::UnavailableError("the server is shutting down"));
  const std::string id = req->session_id().empty() ? SessionIdHeader(ctx) : req->session_id();
  if (!id.empty() && !IsValidSessionId(id)) return done.Finish(InvalidSessionId(id));
  absl::StatusOr<SessionSpec> spec = SessionSpecFrom(*req, options_, model_->config());
  if (!spec.ok()) return done.Finish(spec.status());
  if (!id.empty()) done.record().set_session(id);
  absl::StatusOr<SessionSnapshot> s = sessions_->Create(ScopedSessionId(*tenant, id), spec->memory, spec->segment_len);
  if (!s.ok()) return done.Finish(s.status());
  done.record().set_session(s->id);
  ToProto(*s, resp);
  return done.Finish(absl::OkStatus());
}

grpc::ServerUnaryReactor* LmService::GetSession(grpc::CallbackServerContext* ctx, const v1::GetSessionRequest* req,
                                                v1::Session* resp) {
  UnaryDone done(metrics_, ctx, "GetSession");
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return done.Finish(tenant.status());
  done.record().set_tenant(*tenant);
  absl::StatusOr<std::string> id = SessionIdOf(ctx, req->session_id(), *tenant);
  if (!id.ok()) return done.Finish(id.status());
  done.record().set_session(*id);
  absl::StatusOr<SessionSnapshot> s = sessions_->Get(*id);
  if (!s.ok()) return done.Finish(s.status());
  ToProto(*s, resp);
  return done.Finish(absl::OkStatus());
}

grpc::ServerUnaryReactor* LmService::ListSessions(grpc::CallbackServerContext* ctx, const v1::ListSessionsRequest*,
                                                  v1::ListSessionsResponse* resp) {
  UnaryDone done(metrics_, ctx, "ListSessions");
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return done.Finish(tenant.status());
  done.record().set_tenant(*tenant);
  for (const SessionSnapshot& s : sessions_->List()) {
    if (TenantOfSessionId(s.id) == *tenant) ToProto(s, resp->add_sessions());  // the caller's own only
  }
  return done.Finish(absl::OkStatus());
}

grpc::ServerUnaryReactor* LmService::DeleteSession(grpc::CallbackServerContext* ctx,
                                                   const v1::DeleteSessionRequest* req, v1::DeleteSessionResponse*) {
  auto done = std::make_shared<UnaryDone>(metrics_, ctx, "DeleteSession");
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return done->Finish(tenant.status());
  done->record().set_tenant(*tenant);
  absl::StatusOr<std::string> id = SessionIdOf(ctx, req->session_id(), *tenant);
  if (!id.ok()) return done->Finish(id.status());
  done->record().set_session(*id);
  // A session held by a call is deleted when that call ends, if it ends within kDeleteWait (a client
  // that cancels and deletes at once: the cancel may reach the server after the delete).
  struct PendingDelete : SessionManager::DeleteRequest {
    grpc::Alarm give_up;
  };
  auto request = std::make_shared<PendingDelete>();
  request->done = [done](absl::Status s) { done->Finish(s); };
  request->give_up.Set(std::chrono::system_clock::now() + kDeleteWait,
                       [weak = std::weak_ptr<PendingDelete>(request), sid = *id](bool fired) {
                         auto r = weak.lock();
                         if (fired && r) r->Answer(SessionManager::HeldError(sid));
                       });
  sessions_->Delete(*id, request);
  return done->reactor();
}

grpc::ServerBidiReactor<v1::ScoreRequest, v1::ScoreResponse>* LmService::Score(grpc::CallbackServerContext* ctx) {
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) {
    return Refuse<grpc::ServerBidiReactor<v1::ScoreRequest, v1::ScoreResponse>>(metrics_, ctx, "Score", tenant.status());
  }
  return StartScoreCall(&env_, ctx, *std::move(tenant));
}

grpc::ServerWriteReactor<v1::GenerateResponse>* LmService::Generate(grpc::CallbackServerContext* ctx,
                                                                   const v1::GenerateRequest* req) {
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) {
    return Refuse<grpc::ServerWriteReactor<v1::GenerateResponse>>(metrics_, ctx, "Generate", tenant.status());
  }
  return StartGenerateCall(&env_, ctx, req, *std::move(tenant));
}

grpc::ServerUnaryReactor* LmService::ExplainSelection(grpc::CallbackServerContext* ctx,
                                                      const v1::ExplainSelectionRequest* req,
                                                      v1::ExplainSelectionResponse* resp) {
  auto done = std::make_shared<UnaryDone>(metrics_, ctx, "ExplainSelection");
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return done->Finish(tenant.status());
  done->record().set_tenant(*tenant);
  absl::StatusOr<std::string> id = SessionIdOf(ctx, req->session_id(), *tenant);
  if (!id.ok()) return done->Finish(id.status());
  done->record().set_session(*id);
  grpc::ServerUnaryReactor* reactor = done->reactor();  // gRPC allows one DefaultReactor() per call
  // Taken like a call so that it reads a settled session (after the running call, if any).
  sessions_->Acquire(*id, [this, done, resp](absl::StatusOr<std::shared_ptr<Session>> s) {
    if (!s.ok()) {
      done->Finish(s.status());
      return;
    }
    const Session& session = **s;
    absl::Status status;
    if (session.stream->settings().mode != engine::MemoryMode::kTrams) {
      status = absl::FailedPreconditionError(absl::StrCat(
          SessionRef(session.id), " uses mode '", std::string(engine::MemoryModeName(session.stream->settings().mode)),
          "', which attends the newest tokens and selects nothing; ExplainSelection needs mode trams"));
    } else if (session.last_selection.segment_start < 0) {
      status = absl::FailedPreconditionError(
          absl::StrCat(SessionRef(session.id), " has not run a segment yet: score or generate first"));
    } else {
      ToProto(session, codec_, resp);
    }
    sessions_->Release(*s);
    done->Finish(status);
  }, /*reserve_undo=*/false);
  return reactor;
}

grpc::ServerWriteReactor<v1::SessionChunk>* LmService::ExportSession(grpc::CallbackServerContext* ctx,
                                                                     const v1::ExportSessionRequest* req) {
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return Refuse<grpc::ServerWriteReactor<v1::SessionChunk>>(metrics_, ctx, "ExportSession", tenant.status());
  return StartExportCall(&env_, ctx, req, *std::move(tenant));
}

grpc::ServerReadReactor<v1::ImportSessionRequest>* LmService::ImportSession(grpc::CallbackServerContext* ctx,
                                                                            v1::Session* resp) {
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) {
    return Refuse<grpc::ServerReadReactor<v1::ImportSessionRequest>>(metrics_, ctx, "ImportSession", tenant.status());
  }
  return StartImportCall(&env_, ctx, resp, *std::move(tenant));
}

grpc::ServerUnaryReactor* LmService::ForkSession(grpc::CallbackServerContext* ctx, const v1::ForkSessionRequest* req,
                                                 v1::Session* resp) {
  auto done = std::make_shared<UnaryDone>(metrics_, ctx, "ForkSession");
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return done->Finish(tenant.status());
  done->record().set_tenant(*tenant);
  if (calls_.draining()) return done->Finish(absl::UnavailableError("the server is shutting down"));
  absl::StatusOr<std::string> id = SessionIdOf(ctx, req->session_id(), *tenant);
  if (!id.ok()) return done->Finish(id.status());
  done->record().set_session(*id);
  if (!req->new_session_id().empty() && !IsValidSessionId(req->new_session_id())) {
    return done->Finish(InvalidSessionId(req->new_session_id()));
  }
  grpc::ServerUnaryReactor* reactor = done->reactor();
  sessions_->Fork(*id, ScopedSessionId(*tenant, req->new_session_id()), [done, resp](absl::StatusOr<SessionSnapshot> s) {
    if (s.ok()) ToProto(*s, resp);
    done->Finish(s.status());
  });
  return reactor;
}

}  // namespace trams::server
