// The shared set-up of the end-to-end server tests (score_call_test, generate_call_test, lm_service_test,
// session_limits_test, server_app_test): a real ServerApp in-process on a loopback port, driven through the
// generated gRPC stub. They check the API contract of proto/trams/v1/trams.proto and the transaction
// contract of server/lm_service.h (every failed, cancelled or timed-out call leaves its session exactly
// as it was), against the in-process engine where numbers are involved.
//
// Determinism: no assertion depends on timing. Where a test needs a call to be "in the middle", it waits
// for that call's first answer (proof that the call holds its session) rather than sleeping; races the
// server must handle (a cancel arriving as a failed read, concurrent batching) are provoked repeatedly,
// and a correct server passes every round.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tests/server/server_test_util.h"

namespace trams::server::test {

inline constexpr int kM = 24, kTopk = 4, kRemain = 8, kN = 8;
inline constexpr char kModel[] = "adaptive_samelen";  // byte tokenizer, vocab 260, 3 layers, 3 heads

// Same unset (NaN) entries, and values within `tol` (0: bit-identical). One summary on failure.
inline void ExpectSameLogProbs(const std::vector<float>& a, const std::vector<float>& b, float tol) {
  ASSERT_EQ(a.size(), b.size());
  int differ = 0, first = -1;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(std::isnan(a[i]), std::isnan(b[i])) << "token " << i << ": only one side has a log-prob";
    if (std::isnan(a[i])) continue;
    const double d = std::abs(static_cast<double>(a[i]) - b[i]);
    if (tol == 0 ? a[i] != b[i] : d > tol) {
      if (first < 0) first = static_cast<int>(i);
      ++differ;
    }
    worst = std::max(worst, d);
  }
  EXPECT_EQ(differ, 0) << differ << " of " << a.size() << " log-probs differ by more than " << tol
                       << "; the first at token " << first << " (" << (first >= 0 ? a[first] : 0.0f) << " vs "
                       << (first >= 0 ? b[first] : 0.0f) << "), the largest difference " << worst;
}

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServerOptions options = TestOptions(kModel);
    options.requests.max_generate_tokens = 1 << 30;  // so a Generate can outlive a short deadline
    server_ = StartServer(options).release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(server_, nullptr) << "the server did not start"; }

  static v1::TramsService::Stub* stub() { return server_->stub.get(); }

  // A TRAMS session (M = 24, topk 4, remain 8) with segments of `n`.
  static v1::Session NewSession(const std::string& id, int n = kN) {
    v1::Session s;
    grpc::Status st = CreateSession(stub(), id, Trams(kM, kTopk, kRemain), n, &s);
    EXPECT_TRUE(st.ok()) << "CreateSession(" << id << "): " << Describe(st);
    return s;
  }

  inline static TestServer* server_ = nullptr;
};

}  // namespace trams::server::test
