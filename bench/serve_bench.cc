// `tandem-bench serve --url http://HOST:PORT [--clients N] [--requests N]
//   [--prompt-len DIST] [--max-tokens DIST] [--api-key K] [--json]`
//
// Serving load over the OpenAI-style HTTP API: N concurrent clients each send
// streaming /v1/completions requests (prompt and output lengths drawn from
// DIST: "N" fixed or "A:B" uniform) until --requests are done; prints
// throughput (requests/s, output tokens/s) and time-to-first-token and
// inter-token latency percentiles (p50/p90/p99), measured at the client.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "core/cli.h"
#include "core/command.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

struct LengthDist {
  int lo = 0, hi = 0;
  int Draw(std::mt19937_64& rng) const {
    return lo == hi ? lo : std::uniform_int_distribution<int>(lo, hi)(rng);
  }
};

StatusOr<LengthDist> ParseDist(const std::string& flag, const std::string& text) {
  LengthDist d;
  const size_t colon = text.find(':');
  bool ok = colon == std::string::npos
                ? absl::SimpleAtoi(text, &d.lo)
                : absl::SimpleAtoi(text.substr(0, colon), &d.lo) &&
                      absl::SimpleAtoi(text.substr(colon + 1), &d.hi);
  if (colon == std::string::npos) d.hi = d.lo;
  if (!ok || d.lo < 1 || d.hi < d.lo) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " must be N or A:B with 1 <= A <= B, got '", text, "'"));
  }
  return d;
}

struct Target {
  std::string host, port, base_path;
};

StatusOr<Target> ParseUrl(const std::string& url) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--url must start with http://, got '", url, "'"));
  }
  std::string rest = url.substr(scheme.size());
  Target t;
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    t.base_path = rest.substr(slash);
    rest = rest.substr(0, slash);
  }
  while (!t.base_path.empty() && t.base_path.back() == '/') t.base_path.pop_back();
  if (t.base_path == "/v1") t.base_path.clear();
  const size_t colon = rest.rfind(':');
  t.host = colon == std::string::npos ? rest : rest.substr(0, colon);
  t.port = colon == std::string::npos ? "80" : rest.substr(colon + 1);
  if (t.host.empty()) return absl::InvalidArgumentError("--url has no host");
  return t;
}

struct Result {
  bool ok = false;
  std::string error;
  int prompt_tokens = 0;
  int output_tokens = 0;
  double ttft_s = 0;
  double latency_s = 0;
  std::vector<double> itl_s;  // gaps between streamed pieces
};

// One streaming completion; reads the SSE pieces as they arrive.
Result RunOne(const Target& target, const tcp::resolver::results_type& endpoints,
              const std::string& api_key, const std::string& prompt, int max_tokens) {
  Result result;
  try {
    net::io_context ioc;
    beast::tcp_stream stream(ioc);
    stream.expires_after(std::chrono::minutes(10));
    stream.connect(endpoints);
    json body = {{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0},
                 {"stream", true}, {"stream_options", {{"include_usage", true}}}};
    http::request<http::string_body> req{http::verb::post, target.base_path + "/v1/completions",
                                         11};
    req.set(http::field::host, target.host);
    req.set(http::field::content_type, "application/json");
    if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
    req.body() = body.dump();
    req.prepare_payload();
    const Clock::time_point start = Clock::now();
    http::write(stream, req);

    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64u << 20);
    http::read_header(stream, buffer, parser);
    if (parser.get().result() != http::status::ok) {
      http::read(stream, buffer, parser);
      result.error = absl::StrCat("HTTP ", parser.get().result_int(), ": ", parser.get().body());
      return result;
    }
    std::string pending;
    Clock::time_point last{};
    bool first = true;
    auto on_chunk = [&](std::uint64_t, beast::string_view data, beast::error_code&) -> std::size_t {
      const Clock::time_point now = Clock::now();
      pending.append(data.data(), data.size());
      size_t cut;
      while ((cut = pending.find("\n\n")) != std::string::npos) {
        const std::string event = pending.substr(0, cut);
        pending.erase(0, cut + 2);
        if (event.rfind("data: ", 0) != 0 || event == "data: [DONE]") continue;
        json chunk = json::parse(event.substr(6), nullptr, false);
        if (chunk.is_discarded()) continue;
        if (chunk.contains("error")) result.error = chunk["error"].value("message", "error");
        if (chunk.contains("usage") && chunk["usage"].is_object()) {
          result.prompt_tokens = chunk["usage"].value("prompt_tokens", 0);
          result.output_tokens = chunk["usage"].value("completion_tokens", 0);
        }
        if (chunk.contains("choices") && !chunk["choices"].empty() &&
            !chunk["choices"][0].value("text", "").empty()) {
          if (first) {
            result.ttft_s = std::chrono::duration<double>(now - start).count();
            first = false;
          } else {
            result.itl_s.push_back(std::chrono::duration<double>(now - last).count());
          }
          last = now;
        }
      }
      return data.size();
    };
    parser.on_chunk_body(on_chunk);
    http::read(stream, buffer, parser);
    result.latency_s = std::chrono::duration<double>(Clock::now() - start).count();
    result.ok = result.error.empty() && !first;
    if (!result.ok && result.error.empty()) result.error = "no output";
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  } catch (const std::exception& e) {
    result.error = e.what();
  }
  return result;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

// Words of about one token each in common BPE vocabularies.
constexpr const char* kWords[] = {"the", "model", "runs", "across", "several", "machines", "and",
                                  "each", "node", "holds", "a", "range", "of", "layers", "while",
                                  "hidden", "states", "stream", "between", "stages", "over",
                                  "compressed", "links", "to", "one", "endpoint"};

struct ServeFlags {
  std::string url;
  int clients = 8;
  int requests = 64;
  std::string prompt_len = "128";
  std::string max_tokens = "64";
  std::string api_key;
  uint64_t seed = 1;
  bool json = false;
};

int RunServeBench(const ServeFlags& f) {
  auto target = ParseUrl(f.url);
  if (!target.ok()) return ReportError("tandem-bench", target.status());
  auto prompt_dist = ParseDist("--prompt-len", f.prompt_len);
  if (!prompt_dist.ok()) return ReportError("tandem-bench", prompt_dist.status());
  auto output_dist = ParseDist("--max-tokens", f.max_tokens);
  if (!output_dist.ok()) return ReportError("tandem-bench", output_dist.status());
  if (f.clients < 1 || f.requests < 1) {
    return ReportError("tandem-bench",
                       absl::InvalidArgumentError("--clients and --requests must be at least 1"));
  }
  net::io_context ioc;
  tcp::resolver resolver(ioc);
  beast::error_code ec;
  auto endpoints = resolver.resolve(target->host, target->port, ec);
  if (ec) {
    return ReportError("tandem-bench", absl::UnavailableError(absl::StrCat(
                                           "cannot resolve ", target->host, ": ", ec.message())));
  }

  // The workload is drawn up front so every run with a seed is the same.
  std::mt19937_64 rng(f.seed);
  std::vector<std::pair<std::string, int>> work;
  for (int i = 0; i < f.requests; ++i) {
    const int words = prompt_dist->Draw(rng);
    std::string prompt = absl::StrCat("Request ", i, ":");
    for (int w = 0; w < words; ++w) {
      prompt += " ";
      prompt += kWords[std::uniform_int_distribution<size_t>(0, std::size(kWords) - 1)(rng)];
    }
    work.emplace_back(std::move(prompt), output_dist->Draw(rng));
  }

  std::atomic<int> next{0};
  std::mutex mu;
  std::vector<Result> results;
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < std::min(f.clients, f.requests); ++c) {
    threads.emplace_back([&] {
      for (int i = next.fetch_add(1); i < f.requests; i = next.fetch_add(1)) {
        Result r = RunOne(*target, endpoints, f.api_key, work[i].first, work[i].second);
        std::lock_guard<std::mutex> lock(mu);
        results.push_back(std::move(r));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  int ok = 0;
  int64_t out_tokens = 0, in_tokens = 0;
  std::vector<double> ttft, itl, latency, tpot;
  std::string first_error;
  for (const Result& r : results) {
    if (!r.ok) {
      if (first_error.empty()) first_error = r.error;
      continue;
    }
    ++ok;
    out_tokens += r.output_tokens;
    in_tokens += r.prompt_tokens;
    ttft.push_back(r.ttft_s * 1000);
    latency.push_back(r.latency_s * 1000);
    for (double g : r.itl_s) itl.push_back(g * 1000);
    if (r.output_tokens > 1) {
      tpot.push_back((r.latency_s - r.ttft_s) * 1000 / (r.output_tokens - 1));
    }
  }
  const int failed = static_cast<int>(results.size()) - ok;
  if (f.json) {
    auto pct = [](const std::vector<double>& v) {
      return json{{"p50", Percentile(v, 50)}, {"p90", Percentile(v, 90)}, {"p99", Percentile(v, 99)}};
    };
    json out = {{"url", f.url},
                {"clients", f.clients},
                {"requests", f.requests},
                {"completed", ok},
                {"failed", failed},
                {"seconds", seconds},
                {"requests_per_s", ok / seconds},
                {"output_tokens_per_s", static_cast<double>(out_tokens) / seconds},
                {"input_tokens_per_s", static_cast<double>(in_tokens) / seconds},
                {"prompt_tokens", in_tokens},
                {"output_tokens", out_tokens},
                {"ttft_ms", pct(ttft)},
                {"itl_ms", pct(itl)},
                {"tpot_ms", pct(tpot)},
                {"latency_ms", pct(latency)}};
    if (!first_error.empty()) out["first_error"] = first_error;
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf("serve: %s, %d clients, %d requests (prompt %s words, max_tokens %s)\n",
                f.url.c_str(), f.clients, f.requests, f.prompt_len.c_str(), f.max_tokens.c_str());
    std::printf("  completed %d, failed %d in %.2f s\n", ok, failed, seconds);
    std::printf("  throughput: %.2f requests/s, %.1f output tokens/s, %.1f input tokens/s\n",
                ok / seconds, static_cast<double>(out_tokens) / seconds,
                static_cast<double>(in_tokens) / seconds);
    auto line = [](const char* name, const std::vector<double>& v) {
      std::printf("  %-22s p50 %8.2f  p90 %8.2f  p99 %8.2f ms\n", name, Percentile(v, 50),
                  Percentile(v, 90), Percentile(v, 99));
    };
    line("time to first token", ttft);
    line("inter-token latency", itl);
    line("time per output token", tpot);
    line("request latency", latency);
    if (!first_error.empty()) std::printf("  first error: %s\n", first_error.c_str());
  }
  return failed == 0 ? 0 : 1;
}

std::function<int()> SetupServeBench(CLI::App& sub) {
  auto flags = std::make_shared<ServeFlags>();
  sub.add_option("--url", flags->url, "the coordinator's HTTP API, e.g. http://127.0.0.1:8000")
      ->required();
  sub.add_option("--clients", flags->clients, "concurrent clients")->capture_default_str();
  sub.add_option("--requests", flags->requests, "requests in all")->capture_default_str();
  sub.add_option("--prompt-len", flags->prompt_len, "prompt words: N or A:B (uniform)")
      ->capture_default_str();
  sub.add_option("--max-tokens", flags->max_tokens, "max_tokens per request: N or A:B (uniform)")
      ->capture_default_str();
  sub.add_option("--api-key", flags->api_key, "bearer key of the API");
  sub.add_option("--seed", flags->seed, "seed of the drawn workload")->capture_default_str();
  sub.add_flag("--json", flags->json, "print one JSON object");
  return [flags] { return RunServeBench(*flags); };
}

const bool kRegistered = RegisterCommand(
    {.name = "serve",
     .summary = "serving load over the HTTP API: throughput, TTFT and inter-token latency",
     .setup = &SetupServeBench});

}  // namespace
}  // namespace tandem
