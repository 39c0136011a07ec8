// Generate (server streaming): an optional prompt, then sampled tokens one by one, each fed back into the
// session; the call is one transaction on its session (session_call.h).
#include "server/generate_call.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "engine/sampler.h"
#include "server/proto_convert.h"
#include "server/session_call.h"
#include "server/session_id.h"

namespace trams::server {
namespace {

class GenerateCall final : public SessionCall<grpc::ServerWriteReactor<v1::GenerateResponse>, v1::GenerateResponse> {
 public:
  ~GenerateCall() override { env_->sessions->ChargeBuffers(-charged_).IgnoreError(); }

  GenerateCall(const CallEnv* env, grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req, std::string tenant)
      : SessionCall(env, ctx, "Generate", std::move(tenant)), req_(*req) {
    Actions a;
    {
      std::lock_guard<std::mutex> lock(mu_);
      absl::Status s = Prepare();
      if (!s.ok()) {
        EndWith(s);
        MaybeFinish(a);
      } else {
        StartAcquire(session_id_, a);
      }
      BeginPerform();
    }
    Perform(a);
  }

 private:
  absl::Status Prepare() {
    if (env_->calls->draining()) return absl::UnavailableError("the server is shutting down; retry on another replica");
    if (!slot_.ok()) return slot_;  // the tenant's max_concurrent_calls
    absl::StatusOr<std::string> id = SessionIdOf(ctx_, req_.session_id(), tenant_);
    if (!id.ok()) return id.status();
    session_id_ = *id;
    absl::StatusOr<GenerateSpec> spec =
        GenerateSpecFrom(req_, env_->options->requests, /*fallback_seed=*/std::random_device{}());
    if (!spec.ok()) return spec.status();
    max_tokens_ = spec->max_tokens;
    params_ = spec->sampling;
    if (req_.has_prompt_text()) {
      std::string text = req_.prompt_text();
      absl::Status s = env_->codec->Encode(&text, /*final=*/true, &prompt_);
      if (!s.ok()) return s;
    } else if (req_.has_prompt_ids()) {
      prompt_.assign(req_.prompt_ids().ids().begin(), req_.prompt_ids().ids().end());
      absl::Status s = env_->codec->CheckIds(prompt_);
      if (!s.ok()) return s;
    }
    // The prompt is input held for the whole call: it counts in the input-buffer budget.
    const int64_t prompt_bytes = static_cast<int64_t>(prompt_.size() * sizeof(int32_t));
    absl::Status charged = env_->sessions->ChargeBuffers(prompt_bytes);
    if (!charged.ok()) return charged;
    charged_ = prompt_bytes;
    if (req_.has_expected_position()) expected_position_ = req_.expected_position();
    sampler_ = std::make_unique<engine::Sampler>(params_);
    return absl::OkStatus();
  }

  void OnSessionTaken(Actions& a) override {
    // A provisional tail is fed (committed) first; generated tokens then enter one by one, so segment
    // boundaries count from the end of this call afterwards.
    origin_ = session_->TakeTail(&prompt_);
    if (prompt_.empty() && session_->stream->position() == 0) {
      return EndWith(absl::FailedPreconditionError(
          absl::StrCat(SessionRef(session_->id), " is empty: give a prompt to start from")));
    }
    Step(a);
  }

  // Feeds the next prompt chunk, or asks for the distribution after what the session holds.
  void Step(Actions& a) {
    engine::OutputOptions o;
    o.next_distribution = true;
    const size_t n = static_cast<size_t>(session_->segment_len);
    if (fed_ < prompt_.size()) {
      const size_t take = std::min(n, prompt_.size() - fed_);
      feeding_.assign(prompt_.begin() + static_cast<std::ptrdiff_t>(fed_),
                      prompt_.begin() + static_cast<std::ptrdiff_t>(fed_ + take));
      fed_ += take;
      o.next_distribution = fed_ == prompt_.size();
    } else {
      feeding_.clear();
    }
    feed_start_ = session_->stream->position();
    Submit(feeding_, env_->SegmentOptions(*session_, o, /*selections=*/!feeding_.empty()), a);
  }

  void OnJobDone(engine::SegmentOutput out, Actions& a) override {
    env_->RecordMemoryShare(out);
    if (!feeding_.empty()) {
      // Prompt and generated tokens count in the session's totals.
      ledger_.CountSegment(origin_, feed_start_, feeding_, out.logprob, /*provisional=*/false);
      ledger_.RecordSelection(out, feed_start_, static_cast<int>(feeding_.size()));
    }
    if (final_feed_) {
      v1::GenerateResponse last;
      last.set_position(session_->stream->position());
      last.set_finish_reason(finish_reason_);
      Write(std::move(last), a);
      return EndWith(absl::OkStatus());
    }
    if (out.next_logprobs.empty()) return Step(a);  // more prompt to feed

    const int32_t token = sampler_->Sample(out.next_logprobs);
    ++generated_;
    v1::GenerateResponse resp;
    v1::TokenScore* t = resp.add_tokens();
    t->set_id(token);
    const std::string text = env_->codec->TokenText(token);
    t->set_text(text);
    t->set_position(session_->stream->position());
    t->set_logprob(out.next_logprobs[token]);
    resp.set_position(session_->stream->position() + 1);
    const auto now = Clock::now();
    record_.add_tokens(1);
    if (env_->metrics) {
      env_->metrics->TokensGenerated(1);
      if (generated_ == 1) {
        env_->metrics->TimeToFirstToken(std::chrono::duration<double>(now - start_).count());
      } else {
        env_->metrics->InterTokenLatency(std::chrono::duration<double>(now - last_token_).count());
      }
    }
    last_token_ = now;
    Write(std::move(resp), a);

    generated_text_ += text;
    for (const std::string& stop : req_.stop()) {
      if (generated_text_.size() >= stop.size() &&
          generated_text_.compare(generated_text_.size() - stop.size(), stop.size(), stop) == 0) {
        finish_reason_ = v1::FINISH_REASON_STOP;
      }
    }
    if (finish_reason_ == v1::FINISH_REASON_UNSPECIFIED && generated_ >= max_tokens_) {
      finish_reason_ = v1::FINISH_REASON_LENGTH;
    }
    // Every generated token becomes part of the session: feed it (with the next distribution unless
    // done), once the client keeps up with the answers (AfterEvent).
    final_feed_ = finish_reason_ != v1::FINISH_REASON_UNSPECIFIED;
    feeding_.assign(1, token);
    feed_pending_ = true;
  }

  void AfterEvent(Actions& a) override {
    if (ending()) return MaybeFinish(a);
    if (feed_pending_ && !job_in_flight_ && can_write_more()) {
      feed_pending_ = false;
      engine::OutputOptions o;
      o.next_distribution = !final_feed_;
      feed_start_ = session_->stream->position();
      Submit(feeding_, env_->SegmentOptions(*session_, o), a);
    }
  }

  void OnCommit(Session& session) override { session.Commit(std::move(ledger_)); }

  v1::GenerateRequest req_;
  std::string session_id_;
  int64_t charged_ = 0;  // prompt bytes counted in the input-buffer budget
  int max_tokens_ = 0;
  engine::SamplingParams params_;
  std::unique_ptr<engine::Sampler> sampler_;
  std::vector<int32_t> prompt_;
  size_t fed_ = 0;
  std::vector<int32_t> feeding_;
  int64_t feed_start_ = 0;
  int generated_ = 0;
  std::string generated_text_;
  bool final_feed_ = false;
  bool feed_pending_ = false;  // feeding_ holds a sampled token waiting for the client to catch up
  v1::FinishReason finish_reason_ = v1::FINISH_REASON_UNSPECIFIED;
  Clock::time_point last_token_;
  CallOrigin origin_;
  CallLedger ledger_;
};

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* StartGenerateCall(const CallEnv* env, grpc::CallbackServerContext* ctx,
                                                                 const v1::GenerateRequest* req, std::string tenant) {
  return new GenerateCall(env, ctx, req, std::move(tenant));
}

}  // namespace trams::server
