// One job on the page: its progress (stage, steps, ETA, live preview; a training job's loss curve and latest
// validation image) from the event stream, the cancel button, then its results (images, video, downloads;
// a training job's adapter, with "Use it"), seed and resolved parameters.

import { cancelJob, getJob, jobEvents } from "./api.js";
import { LossChart } from "./chart.js";
import { el as node } from "./fields.js";

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const QUEUE_POLL_MS = 2000;

function queuedText(position) {
  if (position == null) return "queued";
  return position === 0 ? "queued · next" : `queued · ${position} job${position === 1 ? "" : "s"} ahead`;
}

function seconds(s) {
  if (s < 60) return `${Math.max(1, Math.round(s))} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export class JobPanel {
  /** `root`: the job <section>; `changed(job)`: told of each new JobView (for the history); `use(adapter)`:
   * the "Use it" of a training job's adapter. */
  constructor(root, { changed, use }) {
    const $ = (id) => root.querySelector(`#${id}`);
    this.el = {
      empty: $("job-empty"), body: $("job-body"), status: $("status"), id: $("job-id"), running: $("running"),
      bar: $("progress"), stage: $("stage"), steps: $("steps"), eta: $("eta"), cancel: $("cancel"),
      previewBox: $("preview-box"), preview: $("preview"), error: $("job-error"), results: $("results"),
      tools: $("job-tools"), params: $("params"), paramsBox: $("params-box"), seed: $("seed"),
      curlBox: $("curl-box"), previewCaption: $("preview-caption"),
    };
    this.chart = new LossChart($("loss-box"), $("loss"), $("loss-line"));
    this.changed = changed;
    this.use = use;
    this.job = null;
    this.follower = null;
    this.el.cancel.addEventListener("click", () => this.cancel());
  }

  /** Show `job` (a JobView) and follow it until it ends. */
  show(job) {
    this.follower?.abort();
    this.job = job;
    this.clock = null;
    const el = this.el;
    el.empty.hidden = true;
    el.body.hidden = false;
    el.id.textContent = job.id;
    el.results.replaceChildren();
    el.params.replaceChildren();
    el.error.hidden = true;
    el.tools.hidden = true;
    el.curlBox.hidden = true;
    el.paramsBox.hidden = true;
    el.previewBox.hidden = true;
    el.preview.removeAttribute("src");
    el.previewCaption.textContent = job.task === "train" ? "the latest validation image" : "live preview";
    this.chart.reset(job.task === "train");
    el.bar.value = 0;
    if (TERMINAL.has(job.status)) {
      this.finish(job);
      return;
    }
    el.running.hidden = false;
    el.cancel.disabled = false;
    el.cancel.textContent = "Cancel";
    this.progress(job);
    this.follower = new AbortController();
    this.follow(job.id, this.follower.signal);
    this.watchQueue(job.id, this.follower.signal);
  }

  /** While the job waits, read its view every few seconds: its queue position moves with no event (other
   * jobs start, another key's turn comes first). */
  async watchQueue(id, signal) {
    while (!signal.aborted && this.job?.status === "queued") {
      await sleep(QUEUE_POLL_MS);
      if (signal.aborted || this.job?.status !== "queued") return;
      try {
        const view = await getJob(id);
        if (!signal.aborted && view.status === "queued") this.progress(view);
      } catch {
        // unreachable for now: the event stream's own retries take over
      }
    }
  }

  async follow(id, signal) {
    for (let attempt = 0; !signal.aborted; attempt++) {
      try {
        for await (const { event, data } of jobEvents(id, signal)) {
          if (event === "progress") {
            attempt = 0;
            this.progress(data);
          } else if (event === "done") {
            this.finish(data);
            return;
          }
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err.status && err.status < 500 && err.status !== 429) {
          this.showError(`${err.message} (${err.status})`);
          return;
        }
      }
      // The stream ended without `done` (a restart, a proxy's timeout): read the job, then listen again.
      await sleep(Math.min(5000, 300 * 2 ** attempt));
      if (signal.aborted) return;
      try {
        const job = await getJob(id);
        if (signal.aborted) return;
        if (TERMINAL.has(job.status)) {
          this.finish(job);
          return;
        }
        this.progress(job);
      } catch {
        // unreachable for now: try again
      }
    }
  }

  /** A progress event (or a JobView): status, bar, stage, steps, ETA, and the preview when it has one. */
  progress(state) {
    const el = this.el;
    const p = state.progress || {};
    const fraction = Math.min(1, Math.max(0, p.fraction || 0));
    if (this.job && state.status && state.status !== this.job.status) {
      this.job = { ...this.job, status: state.status };
      this.changed(this.job); // the history shows it running
    }
    this.setStatus(state.status);
    el.bar.value = fraction;
    el.bar.textContent = `${Math.round(fraction * 100)} %`;
    el.stage.textContent = state.status === "queued" ? queuedText(state.queue_position) : p.stage || "";
    el.steps.textContent = p.total_steps ? `step ${p.step} of ${p.total_steps}` : "";
    el.eta.textContent = "";
    if (state.status === "running") {
      // Elapsed time since the job started (as this page saw it), over the fraction done since then.
      const now = performance.now();
      if (!this.clock) this.clock = { start: now, fraction };
      const elapsed = (now - this.clock.start) / 1000;
      const gained = fraction - this.clock.fraction;
      if (gained > 0.005 && fraction < 1) el.eta.textContent = `· about ${seconds((elapsed / gained) * (1 - fraction))} left`;
    }
    if (p.loss !== undefined && p.loss !== null && p.stage === "training") this.chart.add(p.step, p.loss, p.total_steps);
    if (state.preview) {
      el.preview.src = state.preview;
      el.previewBox.hidden = false;
    }
  }

  setStatus(status) {
    this.el.status.textContent = status;
    this.el.status.className = `status status-${status}`;
  }

  async cancel() {
    const job = this.job;
    if (!job) return;
    this.el.cancel.disabled = true;
    this.el.cancel.textContent = "Canceling…";
    try {
      const view = await cancelJob(job.id);
      if (this.job?.id === job.id && TERMINAL.has(view.status)) {
        this.follower?.abort();
        this.finish(view);
      }
    } catch (err) {
      if (err.status === 409) return; // it ended meanwhile: its `done` event is on the way
      this.el.cancel.disabled = false;
      this.el.cancel.textContent = "Cancel";
      this.showError(`could not cancel: ${err.message}`);
    }
  }

  showError(text) {
    this.el.empty.hidden = true;
    this.el.body.hidden = false;
    this.el.error.textContent = text;
    this.el.error.hidden = false;
  }

  /** The terminal JobView: results or the error, seed and parameters. */
  finish(job) {
    const el = this.el;
    this.job = job;
    this.setStatus(job.status);
    el.running.hidden = true;
    el.stage.textContent = el.steps.textContent = el.eta.textContent = "";
    if (job.status === "succeeded") el.bar.value = 1;
    if (job.task === "train" && job.progress) this.chart.final(job.progress.loss, job.params && job.params.steps);
    if (job.error) this.showError(job.status === "canceled" ? "Canceled." : `${job.error.code}: ${job.error.message}`);
    el.results.replaceChildren(...this.results(job));
    el.params.replaceChildren(...this.params(job));
    el.seed.textContent = job.params && job.params.seed != null ? job.params.seed : "";
    el.paramsBox.hidden = false;
    el.tools.hidden = false;
    this.changed(job);
  }

  results(job) {
    const out = [];
    const result = job.result || {};
    const short = job.id.slice(0, 8);
    const download = (url, name) => {
      const a = document.createElement("a");
      a.href = url;
      a.download = name;
      a.className = "button";
      a.textContent = "Download";
      return a;
    };
    if (result.adapter) out.push(this.adapter(result.adapter, job));
    if (result.images && result.images.length) {
      if (result.adapter) out.push(node("p", { class: "hint", text: "Validation images, made with the adapter at the end:" }));
      const gallery = document.createElement("div");
      gallery.className = "gallery";
      result.images.forEach((image, i) => {
        const ext = image.content_type.split("/")[1];
        const figure = document.createElement("figure");
        const img = document.createElement("img");
        img.src = image.url;
        img.width = image.width;
        img.height = image.height;
        img.alt = `result ${i + 1} of ${result.images.length}, seed ${image.seed}`;
        const caption = document.createElement("figcaption");
        caption.append(`seed ${image.seed} · ${image.width}×${image.height} `, download(image.url, `fresco-${short}-${i}.${ext}`));
        figure.append(img, caption);
        gallery.append(figure);
      });
      out.push(gallery);
    }
    if (result.video) {
      const video = result.video;
      const ext = video.content_type.split("/")[1];
      const figure = document.createElement("figure");
      figure.className = "video";
      let player;
      if (video.content_type === "video/mp4") {
        player = document.createElement("video");
        Object.assign(player, { controls: true, loop: true, muted: true, autoplay: true, playsInline: true });
      } else {
        player = document.createElement("img"); // an animated WebP or GIF
        player.alt = `video result, seed ${video.seed}`;
      }
      player.src = video.url;
      player.width = video.width;
      player.height = video.height;
      const caption = document.createElement("figcaption");
      caption.append(`seed ${video.seed} · ${video.width}×${video.height} · ${video.num_frames} frames at ${video.fps} fps `,
        download(video.url, `fresco-${short}.${ext}`));
      figure.append(player, caption);
      out.push(figure);
    }
    for (const warning of job.warnings || []) {
      const p = document.createElement("p");
      p.className = "warning";
      p.textContent = warning;
      out.push(p);
    }
    return out;
  }

  /** A training job's adapter: what it is, "Use it" (the generate form set up with it) and its file. */
  adapter(adapter, job) {
    const kind = adapter.token && adapter.kind === "lora" ? "LoRA + embedding" : adapter.kind === "lora" ? "LoRA" : "embedding";
    const word = adapter.token ? ["token ", node("code", { text: adapter.token })]
      : adapter.trigger ? ["trigger ", node("code", { text: adapter.trigger })] : null;
    const use = node("button", { type: "button", id: "use-it", class: "primary", text: "Use it" });
    use.addEventListener("click", () => this.use(adapter, job));
    return node("div", { class: "adapter-card", id: "adapter" },
      node("p", { class: "adapter-title" }, node("strong", { id: "adapter-name", text: adapter.name }),
        ` · ${kind} for ${adapter.model} · ${Math.max(1, Math.round(adapter.size_bytes / 1024))} KB`),
      word ? node("p", { class: "hint" }, ...word, " (put it in a prompt)") : null,
      node("div", { class: "actions" }, use,
        node("a", { class: "button", href: adapter.url, download: `${adapter.name}.safetensors`, text: "Download .safetensors" })));
  }

  /** Every resolved parameter, then the timings. */
  params(job) {
    const rows = [];
    const add = (name, value) => {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      if (Array.isArray(value) && value.some((v) => v && v.image && v.image.url)) { // a training job's images
        const list = document.createElement("ol");
        list.className = "param-images";
        for (const entry of value) {
          if (!(entry && entry.image && entry.image.url)) continue;
          const li = document.createElement("li");
          const a = document.createElement("a");
          a.href = entry.image.url;
          a.target = "_blank";
          a.rel = "noopener";
          a.textContent = `${entry.image.width}×${entry.image.height}`;
          li.append(a, entry.caption ? ` ${entry.caption}` : "");
          list.append(li);
        }
        dd.append(list);
      } else if (value && typeof value === "object" && value.url) {
        const a = document.createElement("a");
        a.href = value.url;
        a.target = "_blank";
        a.rel = "noopener";
        const what = name === "image" ? "input image" : name; // `mask`: an inpaint job's
        a.textContent = value.width ? `${what}, ${value.width}×${value.height}` : what;
        dd.append(a);
      } else {
        dd.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
      }
      dd.dataset.param = name;
      rows.push(dt, dd);
    };
    add("task", job.task);
    add("model", job.model);
    for (const [name, value] of Object.entries(job.params || {})) add(name, value);
    const t = job.timings || {};
    if (t.total_s != null) add("time", `${t.total_s.toFixed(2)} s (queued ${(t.queue_s || 0).toFixed(2)} s)`);
    return rows;
  }
}
