// The page at GET /: a person's way in. It talks to the same /v1 API as every other client, with the key kept in
// this browser's local storage. No framework and no build step: the API serves this file as it is.

const KEY_STORAGE = "captioner.apiKey";
const CONCURRENCY = 4;         // images in flight at once, each a job of its own so each caption shows when ready
const LONG_POLL_SECONDS = 25;  // under the service's longest ?wait (30 s)
const MAX_RETRIES = 5;         // of a 429 or 503, each after the Retry-After the service sends
const TERMINAL = new Set(["succeeded", "partial", "failed", "canceled"]);  // jobs' and bulk runs' ends

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// What a refusal means, in words: the service's own message, and what to do about it where that is not obvious.
function inWords(status, message) {
  const said = message || `The service answered ${status}.`;
  if (status === 401) return `${said} Enter a valid API key above.`;
  if (status === 403) return `${said} This key is not allowed to do that.`;
  if (status === 429) return `${said} This key is over its limits; wait a little and try again.`;
  if (status >= 500) return `${said} The service is having trouble; try again shortly.`;
  return said;
}

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

async function api(path, { method = "GET", body } = {}) {
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(path, { method, body, headers: { Authorization: `Bearer ${apiKey()}` } });
    } catch {
      throw new ApiError(0, "unreachable", "The service could not be reached. Check that it is running, then try again.");
    }
    const retryAfter = Number(response.headers.get("Retry-After"));
    if ((response.status === 429 || response.status === 503) && attempt < MAX_RETRIES) {
      await sleep(Math.min(Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : 1, 30) * 1000);
      continue;
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      // Not JSON (a proxy's error page, say): the status alone is said.
    }
    if (!response.ok) {
      const error = (payload && payload.error) || {};
      throw new ApiError(response.status, error.code || `http_${response.status}`, inWords(response.status, error.message));
    }
    return payload;
  }
}

// ---- the key ----

// What the key field's status line says: whether a key is set, or why the service refused it.
function showKeyStatus(refusal = "") {
  const status = $("key-status");
  status.classList.toggle("error", Boolean(refusal));
  if (refusal) status.textContent = refusal;
  else status.textContent = apiKey() ? "A key is set for this browser." : "No key yet: enter one to caption images.";
}

function useKey(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) {
    $("key-status").textContent = "Enter a key first.";
    return;
  }
  localStorage.setItem(KEY_STORAGE, key);
  $("key").value = "";
  showKeyStatus();
  refresh();
}

function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
  showKeyStatus();
  $("jobs").tBodies[0].replaceChildren();
  $("bulk").replaceChildren();
}

// ---- captioning ----

function readOptions() {
  const options = {};
  for (const name of ["max_new_tokens", "num_beams", "repetition_penalty"]) {
    const field = $(name);
    if (field.value !== "") options[name] = Number(field.value);
  }
  return options;
}

function resultItem(file) {
  const item = document.createElement("li");
  const image = document.createElement("img");
  image.src = URL.createObjectURL(file);
  image.alt = file.name;
  image.addEventListener("load", () => URL.revokeObjectURL(image.src), { once: true });
  const text = document.createElement("div");
  const name = document.createElement("p");
  name.className = "name";
  name.textContent = file.name;
  const outcome = document.createElement("p");
  outcome.className = "outcome pending";
  outcome.textContent = "Sending…";
  text.append(name, outcome);
  item.append(image, text);
  $("results").prepend(item);
  return {
    say(words, kind) {
      outcome.textContent = words;
      outcome.className = `outcome ${kind}`;
    },
  };
}

async function captionOne(file, prompt, options, item) {
  const form = new FormData();
  form.append("images", file, file.name);
  if (prompt) form.append("prompt", prompt);
  if (Object.keys(options).length) form.append("options", JSON.stringify(options));
  try {
    let job = await api("/v1/jobs", { method: "POST", body: form });
    item.say("Captioning…", "pending");
    while (!TERMINAL.has(job.status)) {
      job = await api(`/v1/jobs/${job.id}?wait=${LONG_POLL_SECONDS}`);
    }
    const result = job.results[0];
    if (result && result.caption !== undefined) item.say(result.caption, "caption");
    else if (result && result.error) item.say(result.error.message, "error");
    else if (job.error) item.say(job.error.message, "error");
    else item.say(`The job ended ${job.status}.`, "error");
  } catch (error) {
    item.say(error.message, "error");
    if (error.status === 401) showKeyStatus(error.message);
  }
}

async function captionFiles(files) {
  $("caption-error").textContent = "";
  if (!apiKey()) {
    $("caption-error").textContent = "Enter an API key first (above).";
    $("key").focus();
    return;
  }
  if (!files.length) {
    $("caption-error").textContent = "Choose or drop at least one image.";
    return;
  }
  const prompt = $("prompt").value.trim();
  const options = readOptions();
  const todo = files.map((file) => [file, resultItem(file)]);
  $("images").value = "";  // sent: choosing again starts afresh
  const lanes = Array.from({ length: Math.min(CONCURRENCY, todo.length) }, async () => {
    while (todo.length) {
      const [file, item] = todo.shift();
      await captionOne(file, prompt, options, item);
    }
  });
  await Promise.all(lanes);
  refresh();
}

// ---- the tenant's recent jobs and bulk runs ----

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function jobRow(job) {
  const row = document.createElement("tr");
  const captions = job.results.map((r) => (r.caption !== undefined ? r.caption : r.error.message));
  row.append(
    cell(new Date(job.created_at).toLocaleString()),
    cell(job.status),
    cell(String(job.num_images)),
    cell(captions.join(" · ") || (job.error ? job.error.message : "")),
  );
  return row;
}

function bulkItem(bulk) {
  const progress = bulk.progress;
  const done = progress.captioned + progress.failed + progress.skipped;
  const item = document.createElement("li");
  const label = document.createElement("label");
  const where = `s3://${bulk.source.bucket}/${bulk.source.prefix}`;
  label.textContent = `${where} — ${bulk.status}: ${done} of ${progress.discovered}${progress.listing_complete ? "" : "+"}` +
    ` images (${progress.failed} failed)`;
  const bar = document.createElement("progress");
  bar.id = `bulk-${bulk.id}`;
  label.htmlFor = bar.id;
  bar.max = Math.max(progress.discovered, 1);
  bar.value = done;
  item.append(label, bar);
  return item;
}

let bulkTimer = null;

async function refresh() {
  if (!apiKey()) return;
  $("jobs-error").textContent = "";
  try {
    const [jobs, bulk] = await Promise.all([api("/v1/jobs?limit=10"), api("/v1/bulk?limit=5")]);
    $("jobs").tBodies[0].replaceChildren(...jobs.data.map(jobRow));
    $("bulk").replaceChildren(...bulk.data.map(bulkItem));
    if (!bulk.data.length) $("bulk").append(Object.assign(document.createElement("li"), { textContent: "None yet." }));
    clearTimeout(bulkTimer);
    if (bulk.data.some((run) => !TERMINAL.has(run.status))) bulkTimer = setTimeout(refresh, 2000);
  } catch (error) {
    if (error.status === 401) showKeyStatus(error.message);
    else $("jobs-error").textContent = error.message;
  }
}

// ---- wiring ----

function wire() {
  $("key-form").addEventListener("submit", useKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("refresh").addEventListener("click", refresh);
  $("caption-form").addEventListener("submit", (event) => {
    event.preventDefault();
    captionFiles([...$("images").files]);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    captionFiles([...event.dataTransfer.files]);
  });
  showKeyStatus();
  refresh();
}

wire();
