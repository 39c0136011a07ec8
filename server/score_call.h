// The Score call's reactor (LmService::Score hands each call to it).
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "server/call_env.h"
#include "trams/v1/trams.grpc.pb.h"

namespace trams::server {

grpc::ServerBidiReactor<v1::ScoreRequest, v1::ScoreResponse>* StartScoreCall(const CallEnv* env,
                                                                            grpc::CallbackServerContext* ctx,
                                                                            std::string tenant);

}  // namespace trams::server
