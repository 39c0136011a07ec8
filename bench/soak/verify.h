// The end-of-run check: each session (or a sample) is replayed on a fresh session with the same settings
// — its committed Score calls as Score calls of the same tokens as ids, its Generate calls as the same
// Generate requests (same seed and state: the same tokens must come out) — and the last log-prob the
// replay reports for each position is compared with the one recorded during the soak. --replay_whole
// sends each session's tokens in one call instead (equal only once segment boundaries no longer
// depend on calls).
#pragma once

#include <grpcpp/grpcpp.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/soak/cancel_timer.h"
#include "bench/soak/soak_session.h"
#include "bench/soak/soak_stats.h"

namespace trams::soak {

struct VerifyOptions {
  double tolerance = 1e-4;  // absolute, on log-probs (nats)
  bool replay_whole = false;
  bool generate_as_score = false;  // replay a Generate call as its prompt, then one Score call per token
  int threads = 16;
  int sample = 0;           // sessions to replay, chosen at random (0: all)
  uint64_t seed = 1;
  int max_chunk = 64;       // ids per Score message
  std::chrono::seconds call_timeout{120};
};

struct VerifyResult {
  int sessions = 0;             // replayed
  int corrupted = 0;            // a token count, id or log-prob presence mismatch, a diff over tolerance, or a failed replay
  int64_t tokens = 0;           // replayed
  int64_t compared = 0;         // tokens with a recorded log-prob
  int64_t bit_exact = 0;
  int64_t over_tolerance = 0;
  double max_abs_diff = 0;
  std::string max_diff_where;
  // Compared log-probs by |diff|: 0, <= 1e-6, <= 1e-5, <= 1e-4, more.
  std::array<int64_t, 5> diff_buckets{};
  // Largest |diff| and corrupted sessions per memory mode ("trams", "xl", "none").
  std::map<std::string, double> max_diff_by_mode;
  std::map<std::string, int> corrupted_by_mode;
  std::vector<std::string> first_problems;
  double seconds = 0;

  nlohmann::json ToJson() const;
};

VerifyResult Verify(const std::vector<SessionTruth*>& sessions, std::vector<std::shared_ptr<grpc::Channel>> channels,
                    Stats* stats, CancelTimer* timer, const VerifyOptions& options);

}  // namespace trams::soak
