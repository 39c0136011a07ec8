// Score (bidi streaming): text or ids in, per-token scores out, one segment at a time; the call is one
// transaction on its session (session_call.h).
#include "server/score_call.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/echo.h"
#include "server/session_call.h"
#include "server/session_id.h"

namespace trams::server {
namespace {

// Answers for one segment: `start` is its first position; the ledger counts them.
void AddTokenScores(const TextCodec& codec, absl::Span<const int32_t> ids, const engine::SegmentOutput& out,
                    int64_t start, bool provisional, google::protobuf::RepeatedPtrField<v1::TokenScore>* tokens) {
  for (size_t i = 0; i < ids.size(); ++i) {
    const float lp = out.logprob[i];
    v1::TokenScore* t = tokens->Add();
    t->set_id(ids[i]);
    t->set_text(codec.TokenText(ids[i]));
    t->set_position(start + static_cast<int64_t>(i));
    t->set_provisional(provisional);
    if (!std::isnan(lp)) t->set_logprob(lp);
    if (!out.entropy.empty() && !std::isnan(out.entropy[i])) t->set_entropy(out.entropy[i]);
    if (!out.alternatives.empty()) {
      for (const engine::TokenAlternative& alt : out.alternatives[i]) {
        v1::Alternative* a = t->add_alternatives();
        a->set_id(alt.id);
        a->set_text(codec.TokenText(alt.id));
        a->set_logprob(alt.logprob);
      }
    }
  }
}

class ScoreCall final : public SessionCall<grpc::ServerBidiReactor<v1::ScoreRequest, v1::ScoreResponse>,
                                           v1::ScoreResponse> {
 public:
  ~ScoreCall() override { env_->sessions->ChargeBuffers(-charged_).IgnoreError(); }

  ScoreCall(const CallEnv* env, grpc::CallbackServerContext* ctx, std::string tenant)
      : SessionCall(env, ctx, "Score", std::move(tenant)) {
    Actions a;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (env_->calls->draining()) {
        EndWith(absl::UnavailableError("the server is shutting down; retry on another replica"));
        MaybeFinish(a);
      } else if (!slot_.ok()) {
        EndWith(slot_);  // the tenant's max_concurrent_calls
        MaybeFinish(a);
      } else {
        reading_ = true;
        a.read = true;
      }
      BeginPerform();
    }
    Perform(a);
  }

  void OnReadDone(bool ok) override {
    Actions a;
    {
      std::lock_guard<std::mutex> lock(mu_);
      reading_ = false;
      if (!ending()) {
        if (!ok && ctx_->IsCancelled()) {
          EndWith(absl::CancelledError("the call was cancelled; the session is unchanged"));
        } else if (!ok && !started_) {
          // No message at all: nothing to score. Fine if the metadata names a session, else an error.
          absl::StatusOr<std::string> id = SessionIdOf(ctx_, "", tenant_);
          EndWith(id.ok() ? absl::OkStatus() : id.status());
        } else if (!ok) {
          input_closed_ = true;  // the client half-closed: run what is left
          Absorb(env_->codec->Encode(&text_, /*final=*/true, &pending_));
        } else {
          if (!started_) First(a);
          if (!ending()) AbsorbInput();
        }
      }
      AfterEvent(a);
      BeginPerform();
    }
    Perform(a);
  }

 private:
  void StartReadHook() override { StartRead(&req_); }

  void Absorb(const absl::Status& s) {
    if (!s.ok()) EndWith(s);
  }

  void First(Actions& a) {
    started_ = true;
    absl::StatusOr<std::string> id = SessionIdOf(ctx_, req_.session_id(), tenant_);
    if (!id.ok()) return EndWith(id.status());
    const int max_alt = env_->options->requests.max_alternatives;
    if (req_.options().alternatives() < 0 || req_.options().alternatives() > max_alt) {
      return EndWith(absl::InvalidArgumentError(
          absl::StrCat("options.alternatives must be in [0, ", max_alt, "], got ", req_.options().alternatives())));
    }
    options_.alternatives = req_.options().alternatives();
    options_.entropy = req_.options().entropy();
    if (req_.has_expected_position()) expected_position_ = req_.expected_position();
    session_id_ = *id;
    StartAcquire(*id, a);
  }

  void AbsorbInput() {
    if (!req_.session_id().empty() && req_.session_id() != BareSessionId(session_id_)) {
      return EndWith(absl::InvalidArgumentError(absl::StrCat("a Score call stays on one session: '", engine::EchoForError(req_.session_id()),
                                                             "' after '", BareSessionId(session_id_), "'")));
    }
    switch (req_.input_case()) {
      case v1::ScoreRequest::kText:
        if (static_cast<int64_t>(req_.text().size()) > env_->options->requests.max_chunk_bytes) {
          return EndWith(absl::InvalidArgumentError(absl::StrCat("text chunk of ", req_.text().size(),
                                                                 " bytes is over the limit of ",
                                                                 env_->options->requests.max_chunk_bytes)));
        }
        text_ += req_.text();
        Absorb(env_->codec->Encode(&text_, /*final=*/false, &pending_));
        if (!ending() && static_cast<int64_t>(text_.size()) > env_->options->requests.max_pending_text_bytes) {
          return EndWith(absl::InvalidArgumentError(absl::StrCat(
              "the text holds ", text_.size(), " bytes without a word boundary; this model's tokenizer ",
              "buffers at most ", env_->options->requests.max_pending_text_bytes,
              " (a word cannot be that long): the input is not text for this tokenizer")));
        }
        return ChargeBuffers();
      case v1::ScoreRequest::kIds: {
        const auto& ids = req_.ids().ids();
        absl::Status s = env_->codec->CheckIds(absl::MakeConstSpan(ids.data(), ids.size()));
        if (!s.ok()) return EndWith(s);
        if (!text_.empty()) {
          return EndWith(absl::InvalidArgumentError("ids cannot follow text that ends inside a word"));
        }
        pending_.insert(pending_.end(), ids.begin(), ids.end());
        return ChargeBuffers();
      }
      default:
        return;
    }
  }

  void OnSessionTaken(Actions&) override { origin_ = session_->TakeTail(&pending_); }

  // Keeps the budget's count of this call's input buffers current (they shrink as segments run).
  void ChargeBuffers() {
    const int64_t bytes =
        static_cast<int64_t>(text_.size() + pending_.size() * sizeof(int32_t) + segment_.size() * sizeof(int32_t));
    absl::Status s = env_->sessions->ChargeBuffers(bytes - charged_);
    if (!s.ok()) return EndWith(s);
    charged_ = bytes;
  }

  void AfterEvent(Actions& a) override {
    if (ending()) return MaybeFinish(a);
    if (session_ && !job_in_flight_ && can_write_more()) {
      const size_t n = static_cast<size_t>(session_->segment_len);
      if (pending_.size() >= n || (input_closed_ && !pending_.empty())) {
        const size_t take = std::min(n, pending_.size());
        segment_.assign(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(take));
        pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(take));
        ChargeBuffers();  // pending_ shrank (never fails: fewer bytes)
        segment_start_ = session_->stream->position();
        // An incomplete last segment runs provisionally: the next call runs it again as a whole one.
        provisional_ = take < n;
        Submit(segment_, env_->SegmentOptions(*session_, options_), a, /*commit=*/!provisional_);
      } else if (input_closed_ && pending_.empty()) {
        EndWith(absl::OkStatus());
        return MaybeFinish(a);
      }
    }
    // Read ahead while less than two segments are buffered (backpressure on fast clients).
    const size_t n = session_ ? static_cast<size_t>(session_->segment_len) : 1024;
    if (!input_closed_ && !reading_ && pending_.size() < 2 * n) {
      reading_ = true;
      a.read = true;
    }
  }

  void OnJobDone(engine::SegmentOutput out, Actions& a) override {
    v1::ScoreResponse resp;
    AddTokenScores(*env_->codec, segment_, out, segment_start_, provisional_, resp.mutable_tokens());
    ledger_.CountSegment(origin_, segment_start_, segment_, out.logprob, provisional_);
    ledger_.RecordSelection(out, segment_start_, static_cast<int>(segment_.size()));
    env_->RecordMemoryShare(out);
    resp.set_position(segment_start_ + static_cast<int64_t>(segment_.size()));
    resp.set_first_position(origin_.call_start);
    resp.set_tokens_scored(ledger_.tokens_scored());
    resp.set_nll_sum(ledger_.nll_sum());
    if (ledger_.tokens_scored() > 0) {
      const double mean = ledger_.nll_sum() / static_cast<double>(ledger_.tokens_scored());
      resp.set_ppl(std::exp(mean));
      resp.set_bits_per_token(mean / std::log(2.0));
    }
    int64_t scored = 0;
    for (float lp : out.logprob) scored += std::isnan(lp) ? 0 : 1;
    record_.add_tokens(scored);
    if (env_->metrics) env_->metrics->TokensScored(scored);
    Write(std::move(resp), a);
  }

  void OnCommit(Session& session) override { session.Commit(std::move(ledger_)); }

  v1::ScoreRequest req_;
  std::string session_id_;
  engine::OutputOptions options_;
  int64_t charged_ = 0;  // bytes of text_, pending_ and segment_ counted in the budget
  bool started_ = false;
  bool reading_ = false;
  bool input_closed_ = false;
  std::string text_;              // text not yet encoded (may end inside a word or character)
  std::vector<int32_t> pending_;  // encoded, not yet run
  std::vector<int32_t> segment_;  // the segment in flight
  int64_t segment_start_ = 0;
  bool provisional_ = false;  // the segment in flight is the incomplete last one
  CallOrigin origin_;
  CallLedger ledger_;
};

}  // namespace

grpc::ServerBidiReactor<v1::ScoreRequest, v1::ScoreResponse>* StartScoreCall(const CallEnv* env,
                                                                            grpc::CallbackServerContext* ctx,
                                                                            std::string tenant) {
  return new ScoreCall(env, ctx, std::move(tenant));
}

}  // namespace trams::server
