// The playground: wires the forms (generate, train), the job panel, the history and the API key box together.

import * as api from "./api.js";
import { copyText, curlCommand } from "./curl.js";
import { RequestForm } from "./form.js";
import * as history from "./history.js";
import { JobPanel } from "./job.js";
import { TrainForm, trainTask } from "./train.js";

const $ = (selector) => document.querySelector(selector);
const bodies = new Map(); // job id -> the request body this page sent for it
const trained = new Set(); // training jobs seen succeed: GET /models read again for their adapters
let form = null;
let trainForm = null;

const panel = new JobPanel($("#job"), {
  changed(job) {
    history.remember(job);
    drawHistory();
    if (job.task === "train" && job.status === "succeeded" && !trained.has(job.id)) {
      trained.add(job.id);
      refreshModels(); // the generate form lists the new adapter with its model
    }
  },
  use: useAdapter,
});

// ---------------------------------------------------------------- the tabs: generate, train

function showTab(name, focus = false) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`#${tab.getAttribute("aria-controls")}`).hidden = !on;
    if (on && focus) tab.focus();
  }
}

for (const tab of document.querySelectorAll('[role="tab"]')) {
  tab.addEventListener("click", () => showTab(tab.id.slice("tab-".length)));
}

// Arrow keys, Home and End move between the tabs (Tab moves on into the form).
$(".tabs").addEventListener("keydown", (event) => {
  const tabs = [...document.querySelectorAll('[role="tab"]')].filter((t) => !t.hidden);
  const at = tabs.indexOf(document.activeElement);
  const to = { ArrowLeft: at - 1, ArrowRight: at + 1, Home: 0, End: tabs.length - 1 }[event.key];
  if (at < 0 || to === undefined) return;
  event.preventDefault();
  showTab(tabs[(to + tabs.length) % tabs.length].id.slice("tab-".length), true);
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
    if (trainTask(models)) {
      trainForm = new TrainForm($("#train"), models);
      $("#tab-train").hidden = false;
    }
    if (models.note) {
      $("#note").textContent = models.note;
      $("#note").hidden = false;
    }
  } catch (err) {
    error.textContent = `Could not load the models: ${err.message}` + (err.status === 401 ? " (enter the API key above)" : "");
    error.hidden = false;
  }
}

async function refreshModels() {
  try {
    form?.update(await api.getModels());
  } catch {
    // the next reload reads them
  }
}

/** Whether this key has an adapter `name` (a 409 from POST /train: the name taken, or the key at its limit). */
async function nameTaken(name) {
  try {
    return (await api.getAdapters()).adapters.some((a) => a.name === name);
  } catch {
    return false;
  }
}

/** Submit `which` form's body with `send` (api.submit, api.train); the job to the panel, or the errors to the form. */
async function submitForm(which, button, send) {
  if (!which) return;
  const text = button.textContent;
  button.disabled = true;
  button.textContent = "Submitting…";
  let body = null;
  try {
    body = await which.collect();
    which.clearErrors();
    const job = await send(body);
    bodies.set(job.id, body);
    history.remember(job);
    panel.show(job);
    drawHistory();
  } catch (err) {
    if (err.status === 422 && err.fields.length) which.showErrors(err.fields, err.message);
    else if (err.status === 409 && which === trainForm && body && (await nameTaken(body.name))) trainForm.nameTaken();
    else which.showFormError(err.status ? `${err.message} (${err.status})` : err.message);
  } finally {
    button.disabled = false;
    button.textContent = text;
  }
}

$("#request").addEventListener("submit", (event) => {
  event.preventDefault();
  submitForm(form, $("#submit"), api.submit);
});

$("#train").addEventListener("submit", (event) => {
  event.preventDefault();
  submitForm(trainForm, $("#train-submit"), api.train);
});

// Ctrl+Enter (or Cmd+Enter) in a text area submits too; Enter in any other field does natively.
for (const which of [$("#request"), $("#train")]) {
  which.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target.matches("textarea")) {
      event.preventDefault();
      which.requestSubmit();
    }
  });
}

// ---------------------------------------------------------------- "Use it": a trained adapter in the generate form

async function useAdapter(adapter) {
  if (!form) return;
  try {
    form.update(await api.getModels()); // the adapter is listed with its model from now on
  } catch (err) {
    panel.showError(`Could not load the models: ${err.message}`);
    return;
  }
  showTab("generate");
  form.clearErrors();
  if (!form.useAdapter(adapter)) {
    form.showFormError(`${adapter.name} is not listed for ${adapter.model} any more (deleted, or another API key's).`);
  }
  $("#request").scrollIntoView({ block: "start" });
  ($("#f-prompt") || $("#submit")).focus();
}

// ---------------------------------------------------------------- copy as curl, run again

const routeOf = (task) => (form && form.models.tasks[task] && form.models.tasks[task].route) || "/generate";

async function showCurl(body, route, where) {
  const command = curlCommand(location.origin, body, Boolean(api.apiKey()), route);
  $("#curl").textContent = command;
  $("#curl-message").textContent = "";
  $("#curl-box").hidden = false;
  $("#job-empty").hidden = true;
  const copied = await copyText(command);
  $("#curl-message").textContent = (copied ? "Copied to the clipboard" : "Select and copy it") +
    (api.apiKey() ? "; set FRESCO_API_KEY to your key first" : "") + where + ".";
}

$("#form-curl").addEventListener("click", async () => {
  if (form) showCurl(await form.collect(), "/generate", " (the request the form holds now)");
});

$("#train-curl").addEventListener("click", async () => {
  if (trainForm) showCurl(await trainForm.collect(), "/train", " (the training request the form holds now)");
});

$("#copy-curl").addEventListener("click", () => {
  const job = panel.job;
  if (!job) return;
  const body = bodies.get(job.id) || (job.task === "train" ? trainForm : form)?.bodyFromJob(job);
  const note = bodies.has(job.id) ? "" : " (rebuilt from the job's parameters: input images left out)";
  if (body) showCurl(body, routeOf(job.task), note);
});

$("#run-again").addEventListener("click", async () => {
  const job = panel.job;
  const train = job && job.task === "train";
  const which = train ? trainForm : form;
  if (!job || !which) return;
  showTab(train ? "train" : "generate");
  await which.fill(job);
  $(train ? "#train" : "#request").scrollIntoView({ block: "start" });
  $(train ? "#train-submit" : "#submit").focus();
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
