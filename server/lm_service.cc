#include "server/lm_service.h"

#include <grpcpp/alarm.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "engine/echo.h"
#include "server/metrics.h"
#include "server/request_checks.h"
#include "server/status_convert.h"

namespace trams::server {
namespace {

constexpr char kSessionHeader[] = "x-session-id";
constexpr std::chrono::seconds kDeleteWait{2};

// Finishes a unary call and records its latency.
class UnaryDone {
 public:
  UnaryDone(LmService* svc, grpc::CallbackServerContext* ctx, const char* method)
      : svc_(svc), reactor_(ctx->DefaultReactor()), method_(method), start_(std::chrono::steady_clock::now()) {}
  grpc::ServerUnaryReactor* reactor() const { return reactor_; }
  grpc::ServerUnaryReactor* Finish(const absl::Status& status) {
    const grpc::Status g = ToGrpcStatus(status);
    if (svc_->metrics()) {
      svc_->metrics()->RequestDone(
          method_, StatusCodeName(status.code()),
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
    }
    reactor_->Finish(g);
    return reactor_;
  }

 private:
  static std::string StatusCodeName(absl::StatusCode code) { return absl::StatusCodeToString(code); }
  LmService* svc_;
  grpc::ServerUnaryReactor* reactor_;
  const char* method_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

void ToProto(const engine::TramsSettings& s, v1::MemorySettings* out) {
  switch (s.mode) {
    case engine::MemoryMode::kTrams: out->set_mode(v1::MEMORY_MODE_TRAMS); break;
    case engine::MemoryMode::kXl: out->set_mode(v1::MEMORY_MODE_XL); break;
    case engine::MemoryMode::kNone: out->set_mode(v1::MEMORY_MODE_NONE); break;
  }
  out->set_mem_len(s.mem_len);
  out->set_topk(s.topk);
  out->set_remain(s.remain);
  for (int l : s.layers) out->add_layers(l);
  out->set_metric(s.metric == engine::SelectionMetric::kCode ? v1::SELECTION_METRIC_CODE : v1::SELECTION_METRIC_PAPER);
}

void ToProto(const SessionSnapshot& s, v1::Session* out) {
  out->set_session_id(s.id);
  ToProto(s.memory, out->mutable_memory());
  out->set_segment_len(s.segment_len);
  out->set_position(s.position);
  out->set_pool_tokens(s.pool_tokens);
  out->set_pool_bytes(s.pool_bytes);
  out->set_created_unix_ms(s.created_ms);
  out->set_last_used_unix_ms(s.last_used_ms);
  out->set_tokens_scored(s.tokens_scored);
  out->set_nll_sum(s.nll_sum);
  out->set_busy(s.busy);
}

LmService::LmService(engine::Engine* model, absl::StatusOr<std::unique_ptr<engine::Tokenizer>> tokenizer,
                     SessionManager* sessions, Scheduler* scheduler, Metrics* metrics, const ServerOptions& options)
    : model_(model),
      tokenizer_(std::move(tokenizer)),
      tokenizer_status_(tokenizer_.status()),
      sessions_(sessions),
      scheduler_(scheduler),
      metrics_(metrics),
      options_(options) {}

absl::StatusOr<std::string> LmService::SessionIdOf(grpc::CallbackServerContext* ctx, const std::string& field) const {
  std::string header;
  const auto& md = ctx->client_metadata();
  if (auto it = md.find(kSessionHeader); it != md.end()) header.assign(it->second.data(), it->second.size());
  if (!field.empty() && !header.empty() && field != header) {
    return absl::InvalidArgumentError(absl::StrCat("session_id '", engine::EchoForError(field),
                                                   "' and x-session-id metadata '", engine::EchoForError(header),
                                                   "' disagree"));
  }
  if (field.empty() && header.empty()) {
    return absl::InvalidArgumentError("no session: set session_id or the x-session-id metadata");
  }
  std::string id = field.empty() ? header : field;
  if (!IsValidSessionId(id)) return InvalidSessionId(id);  // later messages may quote it whole
  return id;
}

std::string LmService::TokenText(int32_t id) const {
  const engine::Tokenizer* t = tokenizer();
  return t == nullptr ? std::string() : t->TokenText(id);
}

absl::Status LmService::CheckIds(absl::Span<const int32_t> ids) const {
  const int64_t vocab = model_->config().vocab_size;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", ids[i], " (index ", i, " of the chunk) is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status LmService::Encode(std::string* text, bool final, std::vector<int32_t>* out) const {
  if (text->empty()) return absl::OkStatus();
  const engine::Tokenizer* t = tokenizer();
  if (t == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("this model takes token ids, not text (", tokenizer_status_.message(), ")"));
  }
  const size_t n = final ? text->size() : t->StableByteCount(*text);
  if (n == 0) return absl::OkStatus();
  absl::StatusOr<std::vector<int32_t>> ids = t->Encode(std::string_view(*text).substr(0, n));
  if (!ids.ok()) return absl::InvalidArgumentError(ids.status().message());
  out->insert(out->end(), ids->begin(), ids->end());
  text->erase(0, n);
  return absl::OkStatus();
}

bool LmService::SampleMemoryShare() {
  const int every = options_.memory_share_every;
  return every > 0 && segments_.fetch_add(1) % static_cast<uint64_t>(every) == 0;
}

void LmService::RecordMemoryShare(const engine::SegmentOutput& out) const {
  if (metrics_ == nullptr || out.memory_share_samples == 0) return;
  metrics_->SelectionShare(out.memory_share_selected / out.memory_share_samples,
                           out.memory_share_recent / out.memory_share_samples);
}

void LmService::RecordConsumed(Session* session, absl::Span<const int32_t> ids) const {
  // Keep the ids of the tokens the pool can still hold, plus one segment, for explanations.
  session->recent_ids.insert(session->recent_ids.end(), ids.begin(), ids.end());
  const size_t keep = static_cast<size_t>(session->stream->capacity()) + options_.limits.max_segment_len;
  while (session->recent_ids.size() > keep) {
    session->recent_ids.pop_front();
    ++session->recent_first;
  }
}

grpc::ServerUnaryReactor* LmService::GetModelInfo(grpc::CallbackServerContext* ctx, const v1::GetModelInfoRequest*,
                                                  v1::ModelInfo* resp) {
  UnaryDone done(this, ctx, "GetModelInfo");
  const engine::ModelConfig& c = model_->config();
  resp->set_model_dir(options_.model_dir);
  resp->set_n_layer(c.n_layer);
  resp->set_d_model(c.d_model);
  resp->set_n_head(c.n_head);
  resp->set_d_head(c.d_head);
  resp->set_vocab_size(c.vocab_size);
  resp->set_tokenizer(tokenizer() ? std::string(tokenizer()->type()) : "none");
  ToProto(options_.defaults.memory, resp->mutable_default_memory());
  resp->set_default_segment_len(options_.defaults.segment_len);
  resp->set_max_segment_len(options_.limits.max_segment_len);
  resp->set_max_mem_len(options_.limits.max_mem_len);
  resp->set_device(model_->device());
  return done.Finish(absl::OkStatus());
}

grpc::ServerUnaryReactor* LmService::CreateSession(grpc::CallbackServerContext* ctx,
                                                   const v1::CreateSessionRequest* req, v1::Session* resp) {
  UnaryDone done(this, ctx, "CreateSession");
  if (draining_) return done.Finish(absl::UnavailableError("the server is shutting down"));
  std::string id = req->session_id();
  if (id.empty()) {
    const auto& md = ctx->client_metadata();
    if (auto it = md.find(kSessionHeader); it != md.end()) id.assign(it->second.data(), it->second.size());
  }
  absl::StatusOr<SessionSpec> spec = SessionSpecFrom(*req, options_, model_->config());
  if (!spec.ok()) return done.Finish(spec.status());
  absl::StatusOr<SessionSnapshot> s = sessions_->Create(id, spec->memory, spec->segment_len);
  if (!s.ok()) return done.Finish(s.status());
  ToProto(*s, resp);
  return done.Finish(absl::OkStatus());
}

grpc::ServerUnaryReactor* LmService::GetSession(grpc::CallbackServerContext* ctx, const v1::GetSessionRequest* req,
                                                v1::Session* resp) {
  UnaryDone done(this, ctx, "GetSession");
  absl::StatusOr<std::string> id = SessionIdOf(ctx, req->session_id());
  if (!id.ok()) return done.Finish(id.status());
  absl::StatusOr<SessionSnapshot> s = sessions_->Get(*id);
  if (!s.ok()) return done.Finish(s.status());
  ToProto(*s, resp);
  return done.Finish(absl::OkStatus());
}

grpc::ServerUnaryReactor* LmService::ListSessions(grpc::CallbackServerContext* ctx, const v1::ListSessionsRequest*,
                                                  v1::ListSessionsResponse* resp) {
  UnaryDone done(this, ctx, "ListSessions");
  for (const SessionSnapshot& s : sessions_->List()) ToProto(s, resp->add_sessions());
  return done.Finish(absl::OkStatus());
}

grpc::ServerUnaryReactor* LmService::DeleteSession(grpc::CallbackServerContext* ctx,
                                                   const v1::DeleteSessionRequest* req, v1::DeleteSessionResponse*) {
  auto done = std::make_shared<UnaryDone>(this, ctx, "DeleteSession");
  absl::StatusOr<std::string> id = SessionIdOf(ctx, req->session_id());
  if (!id.ok()) return done->Finish(id.status());
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

grpc::ServerUnaryReactor* LmService::ExplainSelection(grpc::CallbackServerContext* ctx,
                                                      const v1::ExplainSelectionRequest* req,
                                                      v1::ExplainSelectionResponse* resp) {
  auto done = std::make_shared<UnaryDone>(this, ctx, "ExplainSelection");
  absl::StatusOr<std::string> id = SessionIdOf(ctx, req->session_id());
  if (!id.ok()) return done->Finish(id.status());
  grpc::ServerUnaryReactor* reactor = done->reactor();  // gRPC allows one DefaultReactor() per call
  // Taken like a call so that it reads a settled session (after the running call, if any).
  sessions_->Acquire(*id, [this, done, resp](absl::StatusOr<std::shared_ptr<Session>> s) {
    if (!s.ok()) {
      done->Finish(s.status());
      return;
    }
    Session& session = **s;
    const SelectionRecord& rec = session.last_selection;
    absl::Status status;
    if (session.stream->settings().mode != engine::MemoryMode::kTrams) {
      status = absl::FailedPreconditionError(absl::StrCat(
          "session '", session.id, "' uses mode '", std::string(engine::MemoryModeName(session.stream->settings().mode)),
          "', which attends the newest tokens and selects nothing; ExplainSelection needs mode trams"));
    } else if (rec.segment_start < 0) {
      status = absl::FailedPreconditionError(
          absl::StrCat("session '", session.id, "' has not run a segment yet: score or generate first"));
    } else {
      resp->set_segment_start(rec.segment_start);
      resp->set_segment_len(rec.segment_len);
      for (size_t l = 0; l < rec.selected.size(); ++l) {
        v1::LayerSelection* layer = resp->add_layers();
        layer->set_layer(static_cast<int>(l));
        layer->set_recent_from(rec.recent_from);
        for (size_t h = 0; h < rec.selected[l].size(); ++h) {
          if (rec.selected[l][h].empty()) continue;
          v1::HeadSelection* head = layer->add_heads();
          head->set_head(static_cast<int>(h));
          for (size_t j = 0; j < rec.selected[l][h].size(); ++j) {
            const int64_t pos = rec.selected[l][h][j];
            v1::SelectedToken* t = head->add_selected();
            t->set_position(pos);
            const int64_t k = pos - session.recent_first;
            if (k >= 0 && k < static_cast<int64_t>(session.recent_ids.size())) {
              t->set_id(session.recent_ids[k]);
              t->set_text(TokenText(session.recent_ids[k]));
            }
            if (l < rec.scores.size() && h < rec.scores[l].size() && j < rec.scores[l][h].size()) {
              t->set_score(rec.scores[l][h][j]);
            }
          }
        }
      }
    }
    sessions_->Release(*s);
    done->Finish(status);
  }, /*reserve_undo=*/false);
  return reactor;
}

}  // namespace trams::server
