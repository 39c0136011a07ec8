// The one place where engine/server absl::Status becomes a grpc::Status.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace trams::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace trams::server
