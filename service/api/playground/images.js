// Input images: a drop zone with a file picker, read into data URLs (a form of `image` the contract takes),
// and a zone that takes many files at once (a training set).

export const TYPES = ["image/png", "image/jpeg", "image/webp"];

/** A file's bytes as a data URL. */
export function readFile(file) {
  return new Promise((resolve, reject) => {
    if (!TYPES.includes(file.type)) {
      reject(new Error(`${file.name || "the file"} is not a PNG, JPEG or WebP image`));
      return;
    }
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error || new Error("the file could not be read"));
    reader.readAsDataURL(file);
  });
}

/** An image URL (a job's stored input, say) fetched into a data URL. */
export async function readImageUrl(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`the image answered ${response.status}`);
  const blob = await response.blob();
  return readFile(new File([blob], "input", { type: blob.type }));
}

/**
 * A drop zone: a file input (keyboard and picker), drag and drop onto it, a thumbnail and a button
 * that removes the image. `onImage(zone, promise)` is told of each new image (a data URL promise,
 * or null when removed); the zone's `showImage(dataUrl)` and `showError(text)` update what it shows.
 */
export function dropZone(id, onImage) {
  const zone = document.createElement("div");
  zone.className = "drop";
  const input = document.createElement("input");
  input.type = "file";
  input.accept = TYPES.join(",");
  if (id) input.id = id;
  const text = document.createElement("p");
  text.className = "drop-text";
  text.textContent = "Drop an image here, or choose a file.";
  const thumb = document.createElement("img");
  thumb.className = "thumb";
  thumb.alt = "the chosen image";
  thumb.hidden = true;
  const clear = document.createElement("button");
  clear.type = "button";
  clear.className = "quiet";
  clear.textContent = "Remove image";
  clear.hidden = true;
  zone.append(input, text, thumb, clear);

  zone.showImage = (dataUrl) => {
    thumb.src = dataUrl;
    thumb.hidden = !dataUrl;
    clear.hidden = !dataUrl;
    zone.classList.remove("bad");
    text.textContent = dataUrl ? "Drop another image to replace it." : "Drop an image here, or choose a file.";
  };
  zone.showError = (message) => {
    zone.classList.add("bad");
    text.textContent = message;
  };
  const take = (file) => {
    const promise = readFile(file);
    onImage(zone, promise);
    promise.then(zone.showImage, (err) => {
      onImage(zone, null);
      zone.showError(err.message);
    });
  };
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) take(input.files[0]);
  });
  clear.addEventListener("click", () => {
    input.value = "";
    onImage(zone, null);
    zone.showImage("");
    thumb.removeAttribute("src");
    input.focus();
  });
  acceptDrops(zone, (files) => take(files[0]));
  return zone;
}

/** Files dropped onto `zone` go to `take(files)` (a non-empty array). */
function acceptDrops(zone, take) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const files = [...((event.dataTransfer && event.dataTransfer.files) || [])];
    if (files.length) take(files);
  });
}

/**
 * A drop zone for many files at once: a file input that takes several (`accept`: its types) and drag and
 * drop. `onFiles(files)` is told of each batch; the zone's `showError(text)` and `showText(text)` say
 * what happened to them.
 */
export function filesZone(id, onFiles, { accept = TYPES.join(","), text = "Drop images here, or choose files." } = {}) {
  const zone = document.createElement("div");
  zone.className = "drop drop-many";
  const input = document.createElement("input");
  input.type = "file";
  input.multiple = true;
  input.accept = accept;
  if (id) input.id = id;
  const line = document.createElement("p");
  line.className = "drop-text";
  line.textContent = text;
  zone.append(input, line);
  zone.showText = (message) => {
    zone.classList.remove("bad");
    line.textContent = message || text;
  };
  zone.showError = (message) => {
    zone.classList.add("bad");
    line.textContent = message;
  };
  input.addEventListener("change", () => {
    const files = [...(input.files || [])];
    input.value = ""; // choosing the same files again adds them again
    if (files.length) onFiles(files);
  });
  acceptDrops(zone, onFiles);
  return zone;
}
