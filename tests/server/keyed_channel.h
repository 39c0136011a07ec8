// A tenant's client for the server tests: a stub whose every call carries `authorization: Bearer <key>`
// (added by a client interceptor, so the call helpers of server_test_util.h work unchanged).
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_interceptor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trams/v1/trams.grpc.pb.h"

namespace trams::server::test {

class BearerKeyInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerKeyInterceptor(const std::string& key) : value_("Bearer " + key) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", value_});
    }
    methods->Proceed();
  }

 private:
  const std::string value_;
};

class BearerKeyInterceptorFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerKeyInterceptorFactory(std::string key) : key_(std::move(key)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new BearerKeyInterceptor(key_);
  }

 private:
  const std::string key_;
};

inline std::unique_ptr<trams::v1::TramsService::Stub> KeyedStub(const std::string& address, const std::string& key) {
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<BearerKeyInterceptorFactory>(key));
  return trams::v1::TramsService::NewStub(grpc::experimental::CreateCustomChannelWithInterceptors(
      address, grpc::InsecureChannelCredentials(), grpc::ChannelArguments(), std::move(factories)));
}

}  // namespace trams::server::test
