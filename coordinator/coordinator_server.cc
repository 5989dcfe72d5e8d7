#include "coordinator/coordinator_server.h"

#include <filesystem>

#include "proto/grpc_channel.h"
#include "proto/hello.h"
#include "spdlog/spdlog.h"

namespace tandem {

StatusOr<CoordinatorServerOptions> LoadCoordinatorModel(const CoordinatorConfig& config) {
  if (config.model.empty()) {
    return absl::InvalidArgumentError("no model folder: give --model DIR (or model: in the file)");
  }
  CoordinatorServerOptions options;
  options.config = config;
  ASSIGN_OR_RETURN(options.spec, LoadModelSpec(config.model));
  const std::filesystem::path dir(config.model);
  if (std::filesystem::exists(dir / "tokenizer.json")) {
    ASSIGN_OR_RETURN(options.tokenizer, Tokenizer::Load(dir));
    auto chat = ChatTemplate::ForTokenizer(*options.tokenizer, config.chat_template);
    if (chat.ok()) {
      options.chat_template = std::move(chat).value();
    } else if (!config.chat_template.empty()) {
      return chat.status();
    } else {
      spdlog::warn("no chat template: {} (chat requests will be refused)", std::string(chat.status().message()));
    }
  } else {
    spdlog::warn("{} has no tokenizer.json: prompts must be token ids", config.model);
  }
  return options;
}

StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    CoordinatorServerOptions options) {
  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer());
  s->options_ = std::move(options);
  CoordinatorServerOptions& o = s->options_;

  std::vector<int32_t> stop_ids(o.spec.eos_token_ids.begin(), o.spec.eos_token_ids.end());
  if (o.tokenizer) {
    for (int32_t id : o.tokenizer->eos_ids()) {
      if (std::find(stop_ids.begin(), stop_ids.end(), id) == stop_ids.end()) stop_ids.push_back(id);
    }
  }
  CoordinatorServer* self = s.get();
  EngineOptions eo{
      .max_batch_tokens = o.config.max_batch_tokens,
      .max_sequences = o.config.max_sequences,
      .prefill_chunk = std::min(o.config.max_batch_tokens, 512),
      .max_context = o.spec.max_position_embeddings,
      .vocab_size = o.spec.vocab_size,
      .stop_ids = stop_ids,
      .tokenizer = o.tokenizer.get(),
      .hello = MakeHello({.role = v1::ROLE_COORDINATOR,
                      .node_id = "",
                          .model_fingerprint = o.spec.Fingerprint(),
                          .cluster_token = o.config.cluster_token}),
      .release =
          [self](const std::vector<uint64_t>& ids) {
            if (self->cluster_) self->cluster_->ReleaseSequences(ids);
          },
      .pipeline_event =
          [self](uint64_t epoch, const Status& status) {
            if (self->cluster_) self->cluster_->OnPipelineEvent(epoch, status);
          },
  };
  s->engine_ = std::make_unique<Engine>(std::move(eo));
  s->cluster_ = std::make_unique<Cluster>(
      ClusterOptions{.config = o.config,
                     .spec = o.spec,
                     .heartbeat_interval_ms = o.heartbeat_interval_ms,
                     .missed_heartbeats = o.missed_heartbeats},
      s->engine_.get());
  s->service_ = std::make_unique<CoordinatorService>(
      s->cluster_.get(), s->engine_.get(),
      PromptTools{.spec = &o.spec,
                  .tokenizer = o.tokenizer.get(),
                  .chat_template = o.chat_template ? &*o.chat_template : nullptr});

  grpc::ServerBuilder builder;
  ConfigureServerBuilder(builder);
  builder.AddListeningPort(o.config.listen, grpc::InsecureServerCredentials(), &s->port_);
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    s->server_.reset();
    return absl::UnavailableError(absl::StrCat("cannot listen on ", o.config.listen));
  }
  spdlog::info("coordinator for {} ({} layers, model {}) listening on port {}; waiting for {} node(s)",
               o.spec.architecture, o.spec.num_layers, o.spec.Fingerprint(), s->port_,
               o.config.nodes);
  s->monitor_ = std::thread([self] {
    const auto period = std::chrono::milliseconds(std::max<uint32_t>(10, self->options_.heartbeat_interval_ms / 2));
    std::unique_lock<std::mutex> lock(self->mu_);
    while (!self->cv_.wait_for(lock, period, [self] { return self->stopping_; })) {
      lock.unlock();
      self->cluster_->CheckLiveness();
      lock.lock();
    }
  });
  return s;
}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

void CoordinatorServer::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return stopped_; });
}

void CoordinatorServer::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  // The engine's callbacks reach the cluster: the engine goes first.
  engine_.reset();
  server_.reset();
  service_.reset();
  cluster_.reset();
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
}

}  // namespace tandem
