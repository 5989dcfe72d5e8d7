// `tandem status`: asks a coordinator for the state of its cluster.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "coordinator/cluster_status_format.h"
#include "core/cli.h"
#include "core/command.h"
#include "grpcpp/grpcpp.h"
#include "proto/grpc_channel.h"
#include "tandem/v1/coordinator.grpc.pb.h"

namespace tandem {
namespace {

struct StatusFlags {
  std::string coordinator = "127.0.0.1:7100";
  bool json = false;
  double timeout_s = 5;
};

Status ShowStatus(const StatusFlags& f) {
  auto stub = v1::Coordinator::NewStub(MakeChannel(f.coordinator));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(f.timeout_s * 1000)));
  v1::ClusterStatusResponse response;
  grpc::Status s = stub->ClusterStatus(&context, v1::ClusterStatusRequest(), &response);
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("coordinator ", f.coordinator, ": ", s.error_message()));
  }
  if (f.json) {
    std::printf("%s\n", ClusterStatusToJson(response).dump().c_str());
  } else {
    std::printf("%s", FormatClusterStatus(response).c_str());
  }
  return absl::OkStatus();
}

std::function<int()> SetupStatus(CLI::App& app) {
  auto f = std::make_shared<StatusFlags>();
  app.add_option("--coordinator", f->coordinator, "coordinator address host:port")
      ->capture_default_str();
  app.add_flag("--json", f->json, "print one JSON object");
  app.add_option("--timeout", f->timeout_s, "seconds to wait for an answer")->capture_default_str();
  return [f] {
    Status status = ShowStatus(*f);
    return status.ok() ? 0 : ReportError("tandem status", status);
  };
}

const bool kRegistered = RegisterCommand(
    {.name = "status", .summary = "show the cluster of a coordinator", .setup = &SetupStatus});

}  // namespace
}  // namespace tandem
