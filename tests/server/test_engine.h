// The engine the session manager's own tests run on (no gRPC): the golden adaptive_samelen model on the
// host, one thread.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "engine/open_engine.h"

namespace trams::server::test {

// Opens the model into `out`; a failure is a test failure (call through ASSERT_NO_FATAL_FAILURE).
inline void OpenTestEngine(engine::OpenedEngine* out) {
  engine::DeviceChoice choice;
  choice.device = "cpu";
  choice.threads = 1;
  absl::StatusOr<engine::OpenedEngine> opened =
      engine::OpenEngine(std::string(TRAMS_TEST_DATA_DIR) + "/golden/models/adaptive_samelen", choice);
  ASSERT_TRUE(opened.ok()) << opened.status();
  *out = std::move(*opened);
}

}  // namespace trams::server::test
