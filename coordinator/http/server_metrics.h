#pragma once
// What the HTTP server counts, and GET /metrics in Prometheus' text format
// (version 0.0.4): requests by outcome, prompt and generated tokens,
// time-to-first-token and inter-token latency histograms, open connections,
// plus the cluster's queue, per-stage KV use and busy fraction and per-link
// bytes (raw and on the wire, with the codec) from a status snapshot.
//
// Thread-safe: every method takes one mutex briefly.
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "tandem/v1/coordinator.pb.h"

namespace tandem {

// A Prometheus histogram with fixed upper bounds (seconds).
class LatencyHistogram {
 public:
  explicit LatencyHistogram(std::vector<double> bounds);
  void Observe(double seconds);
  // "<name>_bucket{le=...} ..., <name>_sum, <name>_count" lines.
  void Render(const std::string& name, std::string* out) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); last: +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class ServerMetrics {
 public:
  ServerMetrics();

  // endpoint: "chat" or "completions"; outcome: "stop", "length", "error",
  // "cancelled" (the client went away), "invalid" (4xx), "rejected" (429),
  // "unavailable" (503).
  void CountRequest(const std::string& endpoint, const std::string& outcome);
  void AddPromptTokens(int n);
  void AddGeneratedTokens(int n);
  void ObserveTimeToFirstToken(double seconds);
  void ObserveInterTokenLatency(double seconds);
  void ConnectionOpened();
  void ConnectionClosed();

  std::string Render(const v1::ClusterStatusResponse& cluster) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, std::string>, uint64_t> requests_;
  uint64_t prompt_tokens_ = 0;
  uint64_t generated_tokens_ = 0;
  LatencyHistogram ttft_;
  LatencyHistogram itl_;
  int64_t connections_ = 0;
};

}  // namespace tandem
