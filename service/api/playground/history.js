// This browser's jobs, newest first, in localStorage: {id, task, model, created, status, thumb}.

const KEY = "fresco.history";
const MAX = 50;

export function entries() {
  try {
    const list = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

function save(list) {
  localStorage.setItem(KEY, JSON.stringify(list.slice(0, MAX)));
}

/** Add a job (from its JobView) or update the entry it already has. */
export function remember(job) {
  const list = entries();
  const entry = {
    id: job.id,
    task: job.task,
    model: job.model,
    created: job.created_at,
    status: job.status,
    thumb: thumbnail(job),
  };
  const at = list.findIndex((e) => e.id === job.id);
  if (at >= 0) list[at] = { ...list[at], ...entry, thumb: entry.thumb || list[at].thumb };
  else list.unshift(entry);
  save(list);
}

export function forget(id) {
  save(entries().filter((e) => e.id !== id));
}

export function clear() {
  localStorage.removeItem(KEY);
}

function thumbnail(job) {
  const images = job.result && job.result.images;
  return images && images.length ? images[0].url : null;
}

/** The list as buttons in `ol`; `open(id)` when one is chosen. */
export function render(ol, open, current) {
  const list = entries();
  ol.replaceChildren(...list.map((e) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "history-entry";
    button.dataset.id = e.id;
    if (e.id === current) button.setAttribute("aria-current", "true");
    if (e.thumb) {
      const img = document.createElement("img");
      img.src = e.thumb;
      img.alt = "";
      img.loading = "lazy";
      img.onerror = () => img.remove(); // signed URLs expire; jobs expire
      button.append(img);
    }
    const text = document.createElement("span");
    const when = e.created ? new Date(e.created).toLocaleString() : "";
    const title = document.createElement("strong");
    title.textContent = `${e.task} · ${e.status}`;
    const sub = document.createElement("small");
    sub.textContent = `${when} · ${e.id.slice(0, 8)}`;
    text.append(title, sub);
    button.append(text);
    button.addEventListener("click", () => open(e.id));
    const li = document.createElement("li");
    li.append(button);
    return li;
  }));
  if (!list.length) {
    const li = document.createElement("li");
    li.className = "hint";
    li.textContent = "No jobs yet.";
    ol.append(li);
  }
}
