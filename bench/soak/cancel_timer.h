// CancelTimer: one thread that calls ClientContext::TryCancel at a chosen time, so a blocking call can be
// cancelled at a random point (before the session is taken, mid-segment, between responses, just as the
// server commits). Owns no contexts: Schedule() registers one, Done() unregisters it and guarantees the
// timer never touches it afterwards, so the caller may then destroy the context.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>

namespace trams::soak {

class CancelTimer {
 public:
  using Clock = std::chrono::steady_clock;

  CancelTimer() : thread_([this] { Loop(); }) {}
  ~CancelTimer() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  CancelTimer(const CancelTimer&) = delete;
  CancelTimer& operator=(const CancelTimer&) = delete;

  // Cancels `ctx` at `when` unless Done(returned id) runs first.
  uint64_t Schedule(grpc::ClientContext* ctx, Clock::time_point when) {
    uint64_t id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      id = next_id_++;
      pending_.emplace(std::make_pair(when, id), ctx);
    }
    cv_.notify_all();
    return id;
  }

  // After this returns the timer holds no reference to the context (TryCancel runs under mu_).
  void Done(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = pending_.begin(); it != pending_.end(); ++it) {
      if (it->first.second == id) {
        pending_.erase(it);
        return;
      }
    }
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      if (pending_.empty()) {
        cv_.wait(lock);
        continue;
      }
      auto first = pending_.begin();
      // A copy: Done() may erase the entry while the wait has the lock released.
      const Clock::time_point when = first->first.first;
      if (Clock::now() < when) {
        cv_.wait_until(lock, when);
        continue;
      }
      first->second->TryCancel();  // non-blocking; the call ends with CANCELLED unless it already ended
      pending_.erase(first);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  // (when, id) -> context; few entries at a time (only the calls chosen for a timed cancel).
  std::map<std::pair<Clock::time_point, uint64_t>, grpc::ClientContext*> pending_;
  uint64_t next_id_ = 0;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members it uses
};

}  // namespace trams::soak
