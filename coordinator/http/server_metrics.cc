#include "coordinator/http/server_metrics.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace tandem {
namespace {

// The shortest text that reads back as exactly `v` ("0.005", not
// "0.0050000000000000001").
std::string Number(double v) {
  char buf[64];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

// A label value with \, " and newlines escaped as the format requires.
std::string Label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void Header(std::string* out, const std::string& name, const char* type, const char* help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

}  // namespace

LatencyHistogram::LatencyHistogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void LatencyHistogram::Observe(double seconds) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), seconds) - bounds_.begin();
  ++counts_[i];
  sum_ += seconds;
  ++count_;
}

void LatencyHistogram::Render(const std::string& name, std::string* out) const {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    absl::StrAppend(out, name, "_bucket{le=\"", Number(bounds_[i]), "\"} ", cumulative, "\n");
  }
  cumulative += counts_.back();
  absl::StrAppend(out, name, "_bucket{le=\"+Inf\"} ", cumulative, "\n");
  absl::StrAppend(out, name, "_sum ", Number(sum_), "\n");
  absl::StrAppend(out, name, "_count ", count_, "\n");
}

ServerMetrics::ServerMetrics()
    : ttft_({0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20,
             40, 80}),
      itl_({0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
            0.4, 0.5, 0.75, 1, 2.5}) {}

void ServerMetrics::CountRequest(const std::string& endpoint, const std::string& outcome) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{endpoint, outcome}];
}

void ServerMetrics::AddPromptTokens(int n) {
  std::lock_guard<std::mutex> lock(mu_);
  prompt_tokens_ += static_cast<uint64_t>(std::max(n, 0));
}

void ServerMetrics::AddGeneratedTokens(int n) {
  std::lock_guard<std::mutex> lock(mu_);
  generated_tokens_ += static_cast<uint64_t>(std::max(n, 0));
}

void ServerMetrics::ObserveTimeToFirstToken(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ttft_.Observe(seconds);
}

void ServerMetrics::ObserveInterTokenLatency(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  itl_.Observe(seconds);
}

void ServerMetrics::ConnectionOpened() {
  std::lock_guard<std::mutex> lock(mu_);
  ++connections_;
}

void ServerMetrics::ConnectionClosed() {
  std::lock_guard<std::mutex> lock(mu_);
  --connections_;
}

std::string ServerMetrics::Render(const v1::ClusterStatusResponse& cluster) const {
  std::string out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Header(&out, "tandem_requests_total", "counter",
           "Completion requests by endpoint and outcome.");
    for (const auto& [key, n] : requests_) {
      absl::StrAppend(&out, "tandem_requests_total{endpoint=\"", Label(key.first),
                      "\",outcome=\"", Label(key.second), "\"} ", n, "\n");
    }
    Header(&out, "tandem_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.");
    absl::StrAppend(&out, "tandem_prompt_tokens_total ", prompt_tokens_, "\n");
    Header(&out, "tandem_generation_tokens_total", "counter", "Generated tokens.");
    absl::StrAppend(&out, "tandem_generation_tokens_total ", generated_tokens_, "\n");
    Header(&out, "tandem_time_to_first_token_seconds", "histogram",
           "From the request's arrival to its first generated token.");
    ttft_.Render("tandem_time_to_first_token_seconds", &out);
    Header(&out, "tandem_inter_token_latency_seconds", "histogram",
           "Between consecutive generated tokens of a request.");
    itl_.Render("tandem_inter_token_latency_seconds", &out);
    Header(&out, "tandem_http_connections", "gauge", "Open HTTP connections.");
    absl::StrAppend(&out, "tandem_http_connections ", connections_, "\n");
  }

  Header(&out, "tandem_cluster_ready", "gauge", "1 when a complete pipeline serves.");
  absl::StrAppend(&out, "tandem_cluster_ready ", cluster.state() == "ready" ? 1 : 0, "\n");
  Header(&out, "tandem_queue_waiting_requests", "gauge", "Requests waiting for admission.");
  absl::StrAppend(&out, "tandem_queue_waiting_requests ", cluster.requests_waiting(), "\n");
  Header(&out, "tandem_running_requests", "gauge", "Requests generating.");
  absl::StrAppend(&out, "tandem_running_requests ", cluster.requests_running(), "\n");

  // Stages in pipeline order; nodes outside the plan are left out.
  std::vector<const v1::NodeStatus*> stages;
  for (const v1::NodeStatus& n : cluster.nodes()) {
    if (n.last_layer() > n.first_layer()) stages.push_back(&n);
  }
  std::sort(stages.begin(), stages.end(), [](const v1::NodeStatus* a, const v1::NodeStatus* b) {
    return a->stage_index() < b->stage_index();
  });
  auto labels = [](const v1::NodeStatus& n) {
    return absl::StrCat("stage=\"", n.stage_index(), "\",node=\"", Label(n.node_id()), "\"");
  };
  Header(&out, "tandem_stage_kv_used_ratio", "gauge", "Fraction of a stage's KV blocks in use.");
  for (const v1::NodeStatus* n : stages) {
    const double used = n->kv_total_blocks() == 0
                            ? 0.0
                            : 1.0 - static_cast<double>(n->kv_free_blocks()) /
                                        static_cast<double>(n->kv_total_blocks());
    absl::StrAppend(&out, "tandem_stage_kv_used_ratio{", labels(*n), "} ", Number(used), "\n");
  }
  Header(&out, "tandem_stage_kv_blocks", "gauge", "A stage's KV cache blocks in all.");
  for (const v1::NodeStatus* n : stages) {
    absl::StrAppend(&out, "tandem_stage_kv_blocks{", labels(*n), "} ", n->kv_total_blocks(), "\n");
  }
  Header(&out, "tandem_stage_busy_ratio", "gauge", "Fraction of recent time a stage computed.");
  for (const v1::NodeStatus* n : stages) {
    absl::StrAppend(&out, "tandem_stage_busy_ratio{", labels(*n), "} ",
                    Number(n->busy_fraction()), "\n");
  }
  Header(&out, "tandem_stage_compute_seconds_per_step", "gauge",
         "A stage's recent compute time per micro-batch.");
  for (const v1::NodeStatus* n : stages) {
    absl::StrAppend(&out, "tandem_stage_compute_seconds_per_step{", labels(*n), "} ",
                    Number(n->compute_ms_per_step() / 1000.0), "\n");
  }
  // A stage's link carries what it sends to the next stage (the last stage's
  // link returns sampled tokens).
  auto link_labels = [&](size_t i) {
    const v1::NodeStatus& n = *stages[i];
    const std::string to = i + 1 < stages.size() ? stages[i + 1]->node_id() : "coordinator";
    return absl::StrCat("from=\"", Label(n.node_id()), "\",to=\"", Label(to), "\",codec=\"",
                        Label(n.link_codec().empty() ? "none" : n.link_codec()), "\"");
  };
  Header(&out, "tandem_link_raw_bytes_total", "counter",
         "Bytes a stage sent to the next before compression.");
  for (size_t i = 0; i < stages.size(); ++i) {
    absl::StrAppend(&out, "tandem_link_raw_bytes_total{", link_labels(i), "} ",
                    stages[i]->link_raw_bytes(), "\n");
  }
  Header(&out, "tandem_link_wire_bytes_total", "counter",
         "Bytes a stage sent to the next on the wire (after compression).");
  for (size_t i = 0; i < stages.size(); ++i) {
    absl::StrAppend(&out, "tandem_link_wire_bytes_total{", link_labels(i), "} ",
                    stages[i]->link_wire_bytes(), "\n");
  }
  Header(&out, "tandem_node_up", "gauge", "1 for a healthy node, by name.");
  for (const v1::NodeStatus& n : cluster.nodes()) {
    absl::StrAppend(&out, "tandem_node_up{node=\"", Label(n.node_id()), "\"} ",
                    n.healthy() ? 1 : 0, "\n");
  }
  return out;
}

}  // namespace tandem
