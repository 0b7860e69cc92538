// A training job's loss curve: an inline SVG drawn from the `loss` of each progress event (no library).
// The raw losses faintly, their moving average boldly (one step's loss is noisy), over the job's steps.

const NS = "http://www.w3.org/2000/svg";
const W = 320;
const H = 128;
const PAD = { left: 44, right: 8, top: 8, bottom: 20 };
const MAX_POINTS = 600; // past this, every other point goes: a long job's curve keeps its shape, drawing stays quick
const SMOOTHING = 0.3; // the weight of each new loss in the moving average

const svg = (tag, attrs = {}, text) => {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
};
const short = (x) => (Math.abs(x) >= 1000 || (x !== 0 && Math.abs(x) < 0.001) ? x.toExponential(2) : String(Number(x.toPrecision(3))));

export class LossChart {
  /** `box`: the <figure> (hidden while there is nothing to show); `plot`: its <svg>; `caption`: the words. */
  constructor(box, plot, caption) {
    this.box = box;
    this.plot = plot;
    this.caption = caption;
    plot.setAttribute("viewBox", `0 0 ${W} ${H}`);
    this.reset(false);
  }

  /** Empty, and shown (`shown`: a training job's panel) or not. */
  reset(shown) {
    this.points = []; // [step, loss], by step
    this.total = 0;
    this.last = null;
    this.box.hidden = !shown;
    this.draw();
  }

  /** A progress event's loss at `step` of `total` (a step seen again replaces its loss). */
  add(step, loss, total) {
    if (!Number.isFinite(loss) || !(step > 0)) return;
    this.total = Math.max(this.total, total || 0, step);
    this.last = { step, loss };
    const at = this.points.findLastIndex(([s]) => s <= step);
    if (at >= 0 && this.points[at][0] === step) this.points[at] = [step, loss];
    else this.points.splice(at + 1, 0, [step, loss]);
    if (this.points.length > MAX_POINTS) {
      this.points = this.points.filter((_, i) => i % 2 === 0 || i === this.points.length - 1);
    }
    if (!this.pending) {
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.draw();
      });
    }
  }

  /** Only the last loss known (a finished job opened later: its events are gone). */
  final(loss, total) {
    if (this.points.length || !Number.isFinite(loss)) return;
    this.total = total || 0;
    this.last = { step: total, loss };
    this.draw();
  }

  draw() {
    const points = this.points;
    this.plot.dataset.points = String(points.length);
    this.plot.toggleAttribute("hidden", !points.length); // only words until the first step, or for a job opened later
    const nodes = [];
    const left = PAD.left;
    const right = W - PAD.right;
    const top = PAD.top;
    const bottom = H - PAD.bottom;
    nodes.push(svg("line", { class: "axis", x1: left, y1: bottom, x2: right, y2: bottom }),
      svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: bottom }));
    if (points.length) {
      let lo = Math.min(...points.map(([, l]) => l));
      let hi = Math.max(...points.map(([, l]) => l));
      if (hi - lo < 1e-9) { // one point, or a flat line: drawn across the middle
        const pad = Math.abs(lo) * 0.05 || 0.05;
        lo -= pad;
        hi += pad;
      }
      const first = 1;
      const last = Math.max(this.total, points.at(-1)[0], 2);
      const x = (step) => left + ((step - first) / (last - first)) * (right - left);
      const y = (loss) => bottom - ((loss - lo) / (hi - lo)) * (bottom - top);
      const line = (pairs) => pairs.map(([s, l]) => `${x(s).toFixed(1)},${y(l).toFixed(1)}`).join(" ");
      let average = points[0][1];
      const smooth = points.map(([s, l]) => [s, (average = average + SMOOTHING * (l - average))]);
      nodes.push(
        svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, short(hi)),
        svg("text", { x: left - 4, y: bottom, "text-anchor": "end" }, short(lo)),
        svg("text", { x: left, y: H - 5, "text-anchor": "start" }, `step ${first}`),
        svg("text", { x: right, y: H - 5, "text-anchor": "end" }, `step ${last}`),
        svg("polyline", { class: "loss-raw", points: line(points) }),
        svg("polyline", { class: "loss-smooth", points: line(smooth) }));
      const [s, l] = points.at(-1);
      nodes.push(svg("circle", { class: "loss-dot", cx: x(s).toFixed(1), cy: y(l).toFixed(1), r: 3 }));
    }
    this.plot.replaceChildren(...nodes);
    const last = this.last;
    if (!last) this.caption.textContent = "loss: none yet (the first comes with the first step)";
    else {
      const where = last.step ? ` at step ${last.step}${this.total ? ` of ${this.total}` : ""}` : "";
      const lowest = points.length > 1 ? `; lowest ${short(Math.min(...points.map(([, v]) => v)))}` : "";
      this.caption.textContent = `loss ${short(last.loss)}${where}${lowest}`;
    }
  }
}
