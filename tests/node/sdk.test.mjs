// Upload → create job → list events → list models with the official openai npm package.
// TUNERY_BASE_URL (http://127.0.0.1:PORT/v1) is set by tests/test_api_node.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI, { toFile } from "openai";

const baseURL = process.env.TUNERY_BASE_URL;
const client = new OpenAI({ baseURL, apiKey: process.env.TUNERY_API_KEY || "sk-none", maxRetries: 0 });

function chatJsonl(n) {
  const lines = [];
  for (let i = 0; i < n; i++) {
    lines.push(JSON.stringify({ messages: [
      { role: "system", content: "Answer briefly." },
      { role: "user", content: `node question ${i}` },
      { role: "assistant", content: `node answer ${i}` },
    ] }));
  }
  return lines.join("\n") + "\n";
}

test("upload, create a job, list its events, list models", { skip: !baseURL }, async () => {
  const file = await client.files.create({
    file: await toFile(Buffer.from(chatJsonl(12)), "node.jsonl"),
    purpose: "fine-tune",
  });
  assert.equal(file.object, "file");
  assert.equal(file.status, "processed");
  assert.match(file.id, /^file-/);

  const job = await client.fineTuning.jobs.create({
    model: "gpt-4o-mini", training_file: file.id, suffix: "node", seed: 7,
    method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 2 } } },
  });
  assert.equal(job.object, "fine_tuning.job");
  assert.equal(job.status, "queued");
  assert.equal(job.seed, 7);
  assert.equal(job.hyperparameters.n_epochs, 2);

  const events = [];
  for await (const ev of client.fineTuning.jobs.listEvents(job.id, { limit: 1 })) events.push(ev);
  assert.equal(events.length, 3);
  assert.equal(events.at(-1).message, `Created fine-tuning job: ${job.id}`);
  assert.ok(events.every((e) => e.object === "fine_tuning.job.event"));

  const jobs = [];
  for await (const j of client.fineTuning.jobs.list()) jobs.push(j.id);
  assert.deepEqual(jobs, [job.id]);

  const models = [];
  for await (const m of client.models.list()) models.push(m.id);
  assert.ok(models.includes("gpt-4o-mini"));
  assert.ok(models.includes("smollm2-135m-instruct"));

  await assert.rejects(client.fineTuning.jobs.create({ model: "no-such-model", training_file: file.id }),
    (err) => err instanceof OpenAI.BadRequestError && err.param === "model");
  await assert.rejects(client.files.retrieve("file-missing"), (err) => err instanceof OpenAI.NotFoundError);

  const cancelled = await client.fineTuning.jobs.cancel(job.id);
  assert.equal(cancelled.status, "cancelled");
});
