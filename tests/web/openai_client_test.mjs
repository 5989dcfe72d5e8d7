// The official openai npm package against tandem's HTTP API (over the fake
// backend): streaming and non-streaming chat at temperature 0 give identical
// text, completions work, and a wrong key is refused.
//   node openai_client_test.mjs PATH/TO/fake_http_server
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startServer, serverBinary } from "./server.mjs";

const KEY = "test-key-123";
const server = await startServer(serverBinary(), ["--api-key", KEY, "--token-delay-ms", "2"]);
let failed = false;
try {
  const client = new OpenAI({ baseURL: server.url + "/v1", apiKey: KEY, maxRetries: 0 });

  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ["tandem-test"]);

  const messages = [
    { role: "system", content: "You are terse." },
    { role: "user", content: "Say hello." },
  ];
  const whole = await client.chat.completions.create({
    model: "tandem-test", messages, temperature: 0, max_tokens: 64,
  });
  const text = whole.choices[0].message.content;
  assert.ok(text.length > 0, "empty answer");
  assert.equal(whole.choices[0].finish_reason, "stop");
  assert.ok(whole.usage.prompt_tokens > 0 && whole.usage.completion_tokens > 0);

  const stream = await client.chat.completions.create({
    model: "tandem-test", messages, temperature: 0, max_tokens: 64, stream: true,
    stream_options: { include_usage: true },
  });
  let streamed = "";
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      streamed += c.delta?.content ?? "";
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(streamed, text, "streaming and non-streaming answers differ");
  assert.equal(finish, "stop");
  assert.ok(chunks > 3, "the answer did not arrive in pieces");
  assert.deepEqual(usage, whole.usage);

  const completion = await client.completions.create({
    model: "tandem-test", prompt: "Once upon a time", max_tokens: 4, temperature: 0,
  });
  assert.equal(completion.object, "text_completion");
  assert.equal(completion.choices[0].finish_reason, "length");
  assert.equal(completion.usage.completion_tokens, 4);
  assert.ok(completion.choices[0].text.length > 0);

  const streamedCompletion = await client.completions.create({
    model: "tandem-test", prompt: "Once upon a time", max_tokens: 4, temperature: 0, stream: true,
  });
  let completionText = "";
  for await (const chunk of streamedCompletion) completionText += chunk.choices[0]?.text ?? "";
  assert.equal(completionText, completion.choices[0].text);

  // Errors come back as the SDK's typed errors.
  const wrong = new OpenAI({ baseURL: server.url + "/v1", apiKey: "not-the-key", maxRetries: 0 });
  await assert.rejects(
    wrong.chat.completions.create({ model: "tandem-test", messages }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 && e.code === "invalid_api_key");
  await assert.rejects(
    client.chat.completions.create({ model: "gpt-unknown", messages }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === "model_not_found");
  await assert.rejects(
    client.chat.completions.create({ model: "tandem-test", messages, temperature: 9 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === "temperature");
  console.log("openai client: all checks passed (" + text.length + " chars, " + chunks + " chunks)");
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await server.stop();
}
process.exit(failed ? 1 : 0);
