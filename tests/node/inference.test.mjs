// Chat through the official openai npm package on one inference backend: a greedy answer with usage,
// the same answer streamed (with usage), and /v1/models naming the backend that serves the model.
// TUNERY_BASE_URL, TUNERY_MODEL and TUNERY_BACKEND are set by tests/test_inference_api.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const baseURL = process.env.TUNERY_BASE_URL;
const model = process.env.TUNERY_MODEL;
const client = new OpenAI({ baseURL, apiKey: "sk-none", maxRetries: 0 });
const messages = [{ role: "user", content: "Say something about cats." }];

test("chat, streamed chat and the model's backend", { skip: !baseURL }, async () => {
  const r = await client.chat.completions.create({ model, messages, temperature: 0, max_tokens: 12 });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.usage.completion_tokens, 12);
  const text = r.choices[0].message.content;
  assert.ok(text.length > 0);

  const stream = await client.chat.completions.create({
    model, messages, temperature: 0, max_tokens: 12, stream: true, stream_options: { include_usage: true } });
  let streamed = "";
  let usage = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) streamed += c.delta?.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(streamed, text);
  assert.equal(usage.completion_tokens, 12);

  const m = await client.models.retrieve(model);
  assert.equal(m.id, model);
  assert.equal(m.backend, process.env.TUNERY_BACKEND);
});
