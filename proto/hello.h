#pragma once
// The hello that opens every tandem connection, and the check both sides run
// on the peer's hello before anything else.
#include <string>

#include "core/status.h"
#include "tandem/v1/common.pb.h"

namespace tandem {

inline constexpr uint32_t kProtocolVersion = 1;

struct HelloParams {
  v1::Role role = v1::ROLE_UNSPECIFIED;
  std::string node_id;
  std::string model_fingerprint;
  std::string cluster_token;
};
v1::Hello MakeHello(const HelloParams& params);

// "coordinator", "node 'gpu-box'", "client 'x'", ...
std::string DescribePeer(const v1::Hello& hello);

// Accepts `theirs` when it speaks this protocol version, carries the same
// cluster token (both may be empty), and names the same model fingerprint
// (a side without a model yet, i.e. an empty fingerprint, is accepted).
// Otherwise FailedPrecondition (PermissionDenied for the token) with a
// message naming which side has what, e.g. "protocol version mismatch: this
// coordinator speaks 1, node 'gpu-box' speaks 2". Tokens are never printed.
Status CheckHello(const v1::Hello& mine, const v1::Hello& theirs);

}  // namespace tandem
