#pragma once
// Parsers for the scalar values of configuration files and flags. Each
// returns an error that says what was expected; the caller adds where.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tandem {

// "8GiB", "512MiB", "1.5GiB", "64KiB", "2TiB", "8GB" (decimal), "4096", "0".
// Binary suffixes (KiB, MiB, GiB, TiB; also K, M, G, T) multiply by 1024^n,
// decimal ones (KB, MB, GB, TB) by 1000^n; a plain number is bytes.
StatusOr<uint64_t> ParseByteSize(std::string_view text);
// "8.0 GiB"-style rendering for logs and messages.
std::string FormatByteSize(uint64_t bytes);

// A decimal integer in [min, max].
StatusOr<int64_t> ParseInteger(std::string_view text, int64_t min, int64_t max);

// What an address is for: one to dial needs a real port; one to listen on
// may ask for a free port with port 0.
enum class AddressUse { kDial, kListen };

// "host:port" or "[v6addr]:port" with a port in [1, 65535] ([0, 65535] to
// listen on); the host may be a name or an address and must not be empty.
struct HostPort {
  std::string host;
  int port = 0;
  std::string ToString() const;
};
StatusOr<HostPort> ParseHostPort(std::string_view text, AddressUse use = AddressUse::kDial);

// Stores `text` in *out where ParseHostPort(text, use) accepts it; with
// `optional`, an empty text clears *out (the address is off or derived).
Status SetHostPort(std::string_view text, AddressUse use, std::string* out, bool optional = false);

// One of `choices`, exactly.
Status CheckChoice(std::string_view text, const std::vector<std::string_view>& choices);

}  // namespace tandem
