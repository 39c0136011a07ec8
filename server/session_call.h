// Machinery shared by the Score and Generate reactors: taking the session, the transaction, one job
// in flight at a time, an ordered write queue, and ending the call exactly once (commit on OK, roll
// back otherwise, release the session, then Finish). Every event decides its actions under the mutex
// and performs them outside it (gRPC may run the next reaction inline); Finish is issued only when no
// other event is still performing, since OnDone deletes the reactor.
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "server/call_env.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/request_record.h"
#include "server/scheduler.h"
#include "server/scoped_id.h"

namespace trams::server {

template <class Response>
struct CallActions {
  bool read = false;
  const Response* write = nullptr;
  std::optional<SegmentJob> submit;
  std::shared_ptr<Session> release;
  bool remove_active = false;
  std::optional<std::string> acquire;
};

template <class Reactor, class Response>
class SessionCall : public Reactor {
 protected:
  using Actions = CallActions<Response>;

  SessionCall(const CallEnv* env, grpc::CallbackServerContext* ctx, const char* method, std::string tenant)
      : env_(env), ctx_(ctx), tenant_(std::move(tenant)), start_(Clock::now()),
        record_(ctx, method, env->metrics) {
    record_.set_tenant(tenant_);
    env_->calls->Started();
    if (env_->tenants) slot_ = env_->tenants->StartCall(tenant_);
  }
  ~SessionCall() override {
    ReleaseSlot();
    env_->calls->Ended();
  }
  // Gives the tenant's running-call slot back, once (Finish is issued once, and the destructor follows it).
  void ReleaseSlot() {
    if (env_->tenants && slot_.ok() && !slot_released_) env_->tenants->EndCall(tenant_);
    slot_released_ = true;
  }

  // Hooks for the concrete call (mutex held).
  virtual void OnSessionTaken(Actions& a) = 0;        // the session is ours and the transaction open
  virtual void OnJobDone(engine::SegmentOutput out, Actions& a) = 0;
  virtual void OnCommit(Session& session) = 0;         // apply call totals to the session

  // Ends the call with `status` once nothing is in flight. First decision wins.
  void EndWith(const absl::Status& status) {
    if (end_.has_value()) return;
    end_ = status;
    if (!status.ok()) {
      while (writes_.size() > (write_in_flight_ ? 1u : 0u)) writes_.pop_back();  // void after a failure
    }
  }
  bool ending() const { return end_.has_value(); }
  // Write backpressure: a call computes its next segment only while fewer than this many answers wait
  // to be sent, so a client that does not read holds neither memory nor the engine (one answer on the
  // wire, one ready behind it).
  static constexpr size_t kMaxQueuedWrites = 2;
  bool can_write_more() const { return writes_.size() < kMaxQueuedWrites; }

  void Write(Response r, Actions& a) {
    writes_.push_back(std::move(r));
    if (!write_in_flight_) {
      write_in_flight_ = true;
      a.write = &writes_.front();
    }
  }

  void Submit(std::vector<int32_t> tokens, const engine::OutputOptions& options, Actions& a, bool commit = true) {
    SegmentJob job;
    job.stream = session_->stream.get();
    job.tokens = std::move(tokens);
    job.options = options;
    job.commit = commit;
    job.done = [this](absl::StatusOr<engine::SegmentOutput> r) { JobDone(std::move(r)); };
    job_in_flight_ = true;
    a.submit = std::move(job);
  }

  void StartAcquire(const std::string& id, Actions& a) {
    acquiring_ = true;
    record_.set_session(id);
    a.acquire = id;
  }

  // A transaction step of the engine failed (only a device error can do that): say so, with the session.
  void LogIfFailed(const absl::Status& s, const char* step) {
    if (!s.ok()) LogError("session transaction failed", {{"session", session_->id}, {"step", step},
                                                          {"error", std::string(s.message())}});
  }

  // Decides what follows the current state (mutex held).
  void MaybeFinish(Actions& a) {
    if (!end_.has_value() || finished_ || job_in_flight_ || write_in_flight_ || acquiring_) return;
    finished_ = true;
    // A client that cancels may look like one that half-closed (its reads end first): never commit then.
    if (end_->ok() && ctx_->IsCancelled()) end_ = absl::CancelledError("the call was cancelled; the session is unchanged");
    if (session_) {
      if (end_->ok()) {
        LogIfFailed(session_->stream->Commit(), "commit");
        OnCommit(*session_);
      } else {
        LogIfFailed(session_->stream->Rollback(), "rollback");
      }
      a.release = session_;
      a.remove_active = true;
    }
    finish_status_ = record_.Finish(*end_);
  }

  // Call with the mutex held at the end of every event; then call Perform(a) without it.
  void BeginPerform() { ++performing_; }

  void Perform(Actions& a) {
    if (a.acquire) {
      env_->sessions->Acquire(*a.acquire, [this](absl::StatusOr<std::shared_ptr<Session>> r) { Taken(std::move(r)); });
    }
    if (a.submit) {
      // The tenant's tokens_per_second: a segment it cannot pay for yet waits in the scheduler (not once
      // the call is cancelled or the server drains: neither may wait on a tenant's rate).
      const engine::EngineStream* stream = a.submit->stream;
      const int64_t tokens = static_cast<int64_t>(a.submit->tokens.size());
      bool delayed = false;
      if (env_->tenants != nullptr) {
        const Clock::time_point now = Clock::now();
        const Clock::duration wait = env_->tenants->Reserve(tenant_, tokens, now);
        if (wait > Clock::duration::zero() && !ctx_->IsCancelled() && !env_->calls->draining()) {
          a.submit->not_before = now + wait;
          delayed = true;
        }
      }
      absl::Status s = env_->scheduler->Submit(std::move(*a.submit));
      if (s.ok() && delayed && ctx_->IsCancelled()) env_->scheduler->Expedite(stream);  // cancelled meanwhile
      if (!s.ok()) {
        if (env_->tenants != nullptr) env_->tenants->Refund(tenant_, tokens);
        Actions next;
        {
          std::lock_guard<std::mutex> lock(mu_);
          job_in_flight_ = false;
          EndWith(s);
          MaybeFinish(next);
          BeginPerform();
        }
        Perform(next);
      }
    }
    if (a.read) StartReadHook();
    if (a.write) this->StartWrite(a.write);
    if (a.release) env_->sessions->Release(a.release);
    if (a.remove_active) env_->scheduler->RemoveActiveCall();
    std::optional<grpc::Status> finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--performing_ == 0 && finish_status_.has_value() && !finish_issued_) {
        finish_issued_ = true;
        finish = finish_status_;
      }
    }
    if (finish) {
      ReleaseSlot();  // before the client sees the status: its next call may take the slot at once
      this->Finish(*finish);  // may delete this (OnDone): nothing after it
    }
  }

  virtual void StartReadHook() {}

  void OnWriteDone(bool ok) override {
    Actions a;
    {
      std::lock_guard<std::mutex> lock(mu_);
      write_in_flight_ = false;
      writes_.pop_front();
      if (!ok) {
        EndWith(absl::CancelledError("the client went away"));
      } else if (!writes_.empty()) {
        write_in_flight_ = true;
        a.write = &writes_.front();
      }
      AfterEvent(a);
      BeginPerform();
    }
    Perform(a);
  }

  void OnCancel() override {
    Actions a;
    const engine::EngineStream* stream = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      EndWith(absl::CancelledError("the call was cancelled (client cancel or deadline); the session is unchanged"));
      if (session_ && job_in_flight_) stream = session_->stream.get();
      MaybeFinish(a);
      BeginPerform();
    }
    if (stream != nullptr) env_->scheduler->Expedite(stream);  // a segment waiting for the tenant's rate
    Perform(a);
  }

  void OnDone() override { delete this; }

  // After any event: continue the work or finish (mutex held).
  virtual void AfterEvent(Actions& a) = 0;

  const CallEnv* env_;
  grpc::CallbackServerContext* ctx_;
  const std::string tenant_;  // the caller's (LmService::Authenticate): its session ids are scoped in it
  absl::Status slot_;         // the tenant's running-call slot (max_concurrent_calls), or why there is none
  bool slot_released_ = false;
  using Clock = std::chrono::steady_clock;
  Clock::time_point start_;
  RequestRecord record_;  // the request id, the latency and the log line
  std::mutex mu_;
  std::shared_ptr<Session> session_;
  std::optional<int64_t> expected_position_;

 private:
  void Taken(absl::StatusOr<std::shared_ptr<Session>> r) {
    Actions a;
    {
      std::lock_guard<std::mutex> lock(mu_);
      acquiring_ = false;
      if (!r.ok()) {
        EndWith(r.status());
      } else if (end_.has_value()) {
        a.release = *r;  // ended while waiting: give it back untouched
      } else {
        session_ = *r;
        const int64_t at = session_->position();
        if (expected_position_.has_value() && *expected_position_ != at) {
          EndWith(absl::FailedPreconditionError(absl::StrCat(SessionRef(session_->id), " is at position ", at,
                                                             ", not the expected ", *expected_position_)));
          a.release = session_;
          session_.reset();
        } else if (absl::Status begun = session_->stream->BeginTransaction(); !begun.ok()) {
          EndWith(begun);  // without an undo log the call could not be rolled back: run nothing
          a.release = session_;
          session_.reset();
        } else {
          env_->scheduler->AddActiveCall();
          OnSessionTaken(a);
        }
      }
      AfterEvent(a);
      BeginPerform();
    }
    Perform(a);
  }

  void JobDone(absl::StatusOr<engine::SegmentOutput> r) {
    Actions a;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_in_flight_ = false;
      if (!end_.has_value()) {
        if (r.ok()) {
          OnJobDone(std::move(*r), a);
        } else {
          EndWith(r.status());
        }
      }
      AfterEvent(a);
      BeginPerform();
    }
    Perform(a);
  }

  std::optional<absl::Status> end_;
  std::optional<grpc::Status> finish_status_;
  int performing_ = 0;
  bool finish_issued_ = false;
  bool finished_ = false;
  bool acquiring_ = false;
  std::deque<Response> writes_;

 protected:
  bool job_in_flight_ = false;
  bool write_in_flight_ = false;
};

}  // namespace trams::server
