// The playground: wires the form, the job panel, the history and the API key box together.

import * as api from "./api.js";
import { copyText, curlCommand } from "./curl.js";
import { RequestForm } from "./form.js";
import * as history from "./history.js";
import { JobPanel } from "./job.js";

const $ = (selector) => document.querySelector(selector);
const bodies = new Map(); // job id -> the request body this page sent for it
let form = null;

const panel = new JobPanel($("#job"), {
  changed(job) {
    history.remember(job);
    drawHistory();
  },
});

// ---------------------------------------------------------------- the API key

function keyBox(message) {
  const box = $("#key-box");
  $("#api-key").value = api.apiKey();
  box.querySelector("summary").textContent = api.apiKey() ? "API key (set)" : "API key";
  if (message) {
    $("#key-message").textContent = message;
    box.open = true;
    $("#api-key").focus();
  }
}

api.whenUnauthorized((err) => {
  keyBox(api.apiKey() ? `The server did not take this key: ${err.message}.` : "This server needs an API key: enter it here.");
});

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  api.setApiKey($("#api-key").value.trim());
  keyBox();
  $("#key-message").textContent = "Saved in this browser.";
  if (!form) loadModels();
});

$("#key-forget").addEventListener("click", () => {
  api.setApiKey("");
  keyBox();
  $("#key-message").textContent = "Forgotten.";
});

// ---------------------------------------------------------------- the form

async function loadModels() {
  const error = $("#form-error");
  try {
    const models = await api.getModels();
    error.hidden = true;
    form = new RequestForm($("#request"), models);
    if (models.note) {
      $("#note").textContent = models.note;
      $("#note").hidden = false;
    }
  } catch (err) {
    error.textContent = `Could not load the models: ${err.message}` + (err.status === 401 ? " (enter the API key above)" : "");
    error.hidden = false;
  }
}

$("#request").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!form) return;
  const button = $("#submit");
  button.disabled = true;
  button.textContent = "Submitting…";
  try {
    const body = await form.collect();
    form.clearErrors();
    const job = await api.submit(body);
    bodies.set(job.id, body);
    history.remember(job);
    panel.show(job);
    drawHistory();
  } catch (err) {
    if (err.status === 422 && err.fields.length) form.showErrors(err.fields, err.message);
    else form.showFormError(err.status ? `${err.message} (${err.status})` : err.message);
  } finally {
    button.disabled = false;
    button.textContent = "Generate";
  }
});

// Ctrl+Enter (or Cmd+Enter) in a text area submits too; Enter in any other field does natively.
$("#request").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target.matches("textarea")) {
    event.preventDefault();
    $("#request").requestSubmit();
  }
});

// ---------------------------------------------------------------- copy as curl, run again

async function showCurl(body, where) {
  const command = curlCommand(location.origin, body, Boolean(api.apiKey()));
  $("#curl").textContent = command;
  $("#curl-message").textContent = "";
  $("#curl-box").hidden = false;
  $("#job-empty").hidden = true;
  const copied = await copyText(command);
  $("#curl-message").textContent = (copied ? "Copied to the clipboard" : "Select and copy it") +
    (api.apiKey() ? "; set FRESCO_API_KEY to your key first" : "") + where + ".";
}

$("#form-curl").addEventListener("click", async () => {
  if (form) showCurl(await form.collect(), " (the request the form holds now)");
});

$("#copy-curl").addEventListener("click", () => {
  const job = panel.job;
  if (!job) return;
  const body = bodies.get(job.id) || form?.bodyFromJob(job);
  const note = bodies.has(job.id) ? "" : " (rebuilt from the job's parameters: input images left out)";
  if (body) showCurl(body, note);
});

$("#run-again").addEventListener("click", async () => {
  if (!form || !panel.job) return;
  await form.fill(panel.job);
  $("#request").scrollIntoView({ block: "start" });
  $("#submit").focus();
});

// ---------------------------------------------------------------- history

async function openJob(id) {
  try {
    const job = await api.getJob(id);
    history.remember(job);
    panel.show(job);
  } catch (err) {
    if (err.status === 404) history.forget(id);
    panel.showError(`Could not open job ${id}: ${err.message}`);
  }
  drawHistory();
}

function drawHistory() {
  history.render($("#history"), openJob, panel.job?.id);
}

$("#history-clear").addEventListener("click", () => {
  history.clear();
  drawHistory();
});

keyBox();
drawHistory();
loadModels();
