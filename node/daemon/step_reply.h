#pragma once
// Where the result of one pipeline step goes: back up the stream it came
// from. Called from any thread, at most once per step.
#include <functional>

#include "tandem/v1/node.pb.h"

namespace tandem {

using StepReply = std::function<void(const v1::StepResult& result)>;

// A StepResult that reports `message` as the step's error.
v1::StepResult StepError(const v1::ForwardBegin& begin, const std::string& message);

}  // namespace tandem
