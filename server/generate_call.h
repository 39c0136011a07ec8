// The Generate call's reactor (LmService::Generate hands each call to it).
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "server/call_env.h"
#include "trams/v1/trams.grpc.pb.h"

namespace trams::server {

grpc::ServerWriteReactor<v1::GenerateResponse>* StartGenerateCall(const CallEnv* env, grpc::CallbackServerContext* ctx,
                                                                 const v1::GenerateRequest* req, std::string tenant);

}  // namespace trams::server
