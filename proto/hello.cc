#include "proto/hello.h"

namespace tandem {

v1::Hello MakeHello(const HelloParams& params) {
  v1::Hello h;
  h.set_protocol_version(kProtocolVersion);
  h.set_role(params.role);
  h.set_node_id(params.node_id);
  h.set_model_fingerprint(params.model_fingerprint);
  h.set_cluster_token(params.cluster_token);
  return h;
}

std::string DescribePeer(const v1::Hello& hello) {
  std::string role;
  switch (hello.role()) {
    case v1::ROLE_COORDINATOR: role = "coordinator"; break;
    case v1::ROLE_NODE: role = "node"; break;
    case v1::ROLE_CLIENT: role = "client"; break;
    case v1::ROLE_BENCH: role = "benchmark"; break;
    default: role = "peer"; break;
  }
  if (hello.node_id().empty()) return role;
  return absl::StrCat(role, " '", hello.node_id(), "'");
}

Status CheckHello(const v1::Hello& mine, const v1::Hello& theirs) {
  const std::string me = "this " + DescribePeer(mine);
  const std::string peer = DescribePeer(theirs);
  if (mine.protocol_version() != theirs.protocol_version()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "protocol version mismatch: ", me, " speaks ", mine.protocol_version(), ", ", peer,
        " speaks ", theirs.protocol_version()));
  }
  if (mine.cluster_token() != theirs.cluster_token()) {
    const char* sent = theirs.cluster_token().empty() ? "no cluster token"
                       : mine.cluster_token().empty() ? "a cluster token"
                                                      : "a different cluster token";
    return absl::PermissionDeniedError(absl::StrCat(
        "cluster token mismatch: ", me,
        mine.cluster_token().empty() ? " has no cluster token, " : " has a cluster token, ",
        peer, " sent ", sent));
  }
  if (!mine.model_fingerprint().empty() && !theirs.model_fingerprint().empty() &&
      mine.model_fingerprint() != theirs.model_fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model fingerprint mismatch: ", me, " has model ", mine.model_fingerprint(), ", ", peer,
        " has model ", theirs.model_fingerprint()));
  }
  return absl::OkStatus();
}

}  // namespace tandem
