// The DOM of one job's view: state, controls, progress, frames, predictions,
// metrics chart, results and log. No networking here: <convlens-job-view> feeds it.

import type { Job, JobResult, JobState, Prediction } from "./api";
import { jobImageId, serverUrl } from "./api";
import { h, replaceChildren, Throttle } from "./dom";
import type { FrameSurface } from "./frame-painter";
import { panelNames, PanelStrip } from "./panel-strip";
import { showTopClasses, type TopClass } from "./top-list";

export type ViewState = JobState | "idle" | "connecting" | "error";
export type Control = "stop" | "pause" | "resume";

const MAX_LOG_LINES = 500;
const LIVE_STATES: ReadonlySet<ViewState> = new Set(["queued", "running", "paused"]);

/** What the view shows before it has a job. */
export function idlePanel(): HTMLElement {
  return h(
    "section",
    { class: "job", part: "job" },
    h(
      "p",
      { class: "idle", "data-testid": "state", "data-state": "idle" },
      "No run yet. Pick a model, an image and a method, then press Run.",
    ),
  );
}

const RATE_WINDOW = 20;
const PROGRESS_MS = 100;

export class JobPanel {
  readonly element: HTMLElement;
  readonly chartCanvas: HTMLCanvasElement;
  private state: ViewState = "connecting";
  private progress: { step: number; total: number } | null = null;
  /** Recent (server time, step) pairs of the running stretch: the run's own steps per second. */
  private stepTimes: { time: number; step: number }[] = [];
  /** Each change repaints, and a viewer on the job's machine takes CPU from its steps. */
  private readonly progressShown = new Throttle(PROGRESS_MS, () => this.showProgress());
  private readonly canvases = new Map<string, HTMLCanvasElement>();
  /** Frames of several panels (labels with " | "), by label. */
  private readonly strips = new Map<string, PanelStrip>();
  /** The newest top classes of each panel: a `predictions` event replaces the lists it names, others stay. */
  private readonly tops = new Map<string, { top: TopClass[]; step: number | null }>();
  private readonly notes = new Map<string, string>();
  private readonly stateEl: HTMLElement;
  private readonly titleEl: HTMLElement;
  private readonly stepEl: HTMLElement;
  private readonly progressEl: HTMLProgressElement;
  private readonly messageEl: HTMLElement;
  private readonly framesEl: HTMLElement;
  private readonly waitingEl: HTMLElement;
  private readonly predictionsEl: HTMLOListElement;
  private readonly chartEmptyEl: HTMLElement;
  private readonly resultsEl: HTMLElement;
  private readonly attributionEl: HTMLElement;
  private readonly methodViewEl: HTMLElement;
  private readonly codeMapEl: HTMLElement;
  private readonly logEl: HTMLOListElement;
  private readonly buttons: Record<Control, HTMLButtonElement>;

  constructor(
    private readonly jobId: string,
    private readonly server: string,
    onControl: (action: Control) => void,
  ) {
    const button = (action: Control, label: string, extra = "") => {
      const element = h(
        "button",
        { type: "button", class: extra, "data-testid": action, disabled: true },
        label,
      );
      element.addEventListener("click", () => {
        element.disabled = true;
        onControl(action);
      });
      return element;
    };
    this.buttons = {
      pause: button("pause", "Pause"),
      resume: button("resume", "Resume"),
      stop: button("stop", "Stop", "danger"),
    };
    this.stateEl = h("span", { class: "state", "data-testid": "state", role: "status" });
    this.titleEl = h("span", { class: "title" }, jobId);
    this.progressEl = h("progress", {
      "data-testid": "progress",
      max: 1,
      value: 0,
      "aria-label": "progress",
    });
    this.stepEl = h("span", { class: "step", "data-testid": "step" });
    this.messageEl = h("p", { class: "message", role: "alert", hidden: true });
    this.waitingEl = h("div", { class: "waiting" }, "waiting for the first frame…");
    this.framesEl = h(
      "div",
      { class: "frames" },
      h("figure", {}, h("canvas", { "data-testid": "canvas", width: 224, height: 224 }), h("figcaption", {})),
      this.waitingEl,
    );
    this.predictionsEl = h("ol", { class: "predictions", "data-testid": "predictions" });
    this.chartCanvas = h("canvas", { class: "chart", "data-testid": "chart" });
    this.chartEmptyEl = h("div", { class: "empty muted" }, "no metrics yet");
    this.resultsEl = h("div", { class: "results", "data-testid": "results", hidden: true });
    this.attributionEl = h("section", { class: "attribution", "data-testid": "attribution", hidden: true });
    this.methodViewEl = h("section", { class: "method-view", "data-testid": "method-view", hidden: true });
    this.codeMapEl = h("section", { class: "code-map", "data-testid": "code-map", hidden: true });
    this.logEl = h("ol", { class: "log", "data-testid": "log" });

    this.element = h(
      "section",
      { class: "job", part: "job", "data-job": jobId },
      h(
        "header",
        { class: "bar" },
        this.stateEl,
        this.titleEl,
        h("span", { class: "controls" }, this.buttons.pause, this.buttons.resume, this.buttons.stop),
      ),
      h("div", { class: "progress-row" }, this.progressEl, this.stepEl),
      this.messageEl,
      h(
        "div",
        { class: "body" },
        this.framesEl,
        h(
          "aside",
          {},
          h("section", {}, h("h3", {}, "Top-5 of the input"), this.predictionsEl),
          h(
            "section",
            {},
            h("h3", {}, "Metrics"),
            h("div", { class: "chart-box" }, this.chartCanvas, this.chartEmptyEl),
          ),
        ),
      ),
      this.methodViewEl,
      this.codeMapEl,
      this.attributionEl,
      this.resultsEl,
      h("details", { open: true }, h("summary", {}, "Log"), this.logEl),
    );
    this.setPredictions([]);
    this.setState("connecting");
  }

  setJob(job: Job): void {
    this.titleEl.replaceChildren(
      h("strong", {}, job.method),
      ` · ${job.model} · ${job.image}`,
      job.seed !== null && job.seed !== undefined ? ` · seed ${job.seed}` : "",
    );
    this.titleEl.title = JSON.stringify(job.params);
    if (job.progress) this.setProgress(job.progress.step, job.progress.total);
    this.setPredictions(job.predictions ?? []);
  }

  setState(state: ViewState, detail = ""): void {
    // A pause (or any other stop) would count its wait as slow steps: measure afresh after it.
    if (state !== "running") this.stepTimes = [];
    this.state = state;
    this.stateEl.dataset.state = state;
    this.stateEl.textContent = detail ? `${state}: ${detail}` : state;
    this.stateEl.title = this.stateEl.textContent;
    this.enableControls();
    this.progressShown.now();
  }

  /** Controls match the state; also re-enables one pressed while its request was pending. */
  enableControls(): void {
    this.buttons.stop.disabled = !LIVE_STATES.has(this.state);
    this.buttons.pause.disabled = this.state !== "running";
    this.buttons.resume.disabled = this.state !== "paused";
  }

  setProgress(step: number, total: number, time?: number): void {
    if (time !== undefined && this.state === "running") {
      const last = this.stepTimes.at(-1);
      if (last && step <= last.step) this.stepTimes = [];
      this.stepTimes.push({ time, step });
      if (this.stepTimes.length > RATE_WINDOW) this.stepTimes.shift();
    }
    this.progress = { step, total };
    // Shown at most every PROGRESS_MS; the last step (and a state change) at once.
    if (step >= total) this.progressShown.now();
    else this.progressShown.request();
  }

  private showProgress(): void {
    const progress = this.progress;
    if (progress) {
      const max = Math.max(progress.total, 1);
      this.progressEl.max = max;
      this.progressEl.value = Math.min(Math.max(progress.step, 0), max);
      this.progressEl.setAttribute("aria-valuenow", String(this.progressEl.value));
    }
    this.showStep();
  }

  /** The bar full, as when a job is done. */
  completeProgress(): void {
    const total = this.progress?.total || 1;
    this.setProgress(total, total);
  }

  showMessage(text: string): void {
    this.messageEl.textContent = text;
    this.messageEl.hidden = !text;
  }

  addLog(level: string, message: string): void {
    const log = this.logEl;
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(h("li", { "data-level": level }, level === "info" ? message : `[${level}] ${message}`));
    while (log.childElementCount > MAX_LOG_LINES) log.firstElementChild?.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  clearLog(): void {
    this.logEl.replaceChildren();
  }

  metricsShown(names: string[]): void {
    this.chartEmptyEl.hidden = names.length > 0;
  }

  /** The canvas for frames of `label`: the first label takes the one already there. A label of several
   * panels ("original | perturbation | adversarial") gets a strip of captioned panels instead. */
  canvasFor(label: string): HTMLCanvasElement | FrameSurface {
    if (panelNames(label)) return this.stripFor(label);
    const existing = this.canvases.get(label);
    if (existing) return existing;
    let canvas: HTMLCanvasElement;
    const placeholder = this.framesEl.querySelector('canvas[data-testid="canvas"]:not([data-label])');
    if (this.canvases.size === 0 && placeholder instanceof HTMLCanvasElement) {
      canvas = this.framesEl.querySelector("canvas") as HTMLCanvasElement;
    } else {
      canvas = h("canvas", { "data-testid": `canvas-${label}` });
      this.framesEl.append(h("figure", {}, canvas, h("figcaption", {})));
    }
    canvas.dataset.label = label;
    this.canvases.set(label, canvas);
    // A lone "main" canvas needs no caption; any other label, or several, do.
    const captioned = this.canvases.size > 1 || label !== "main";
    for (const [name, each] of this.canvases) {
      const caption = each.parentElement?.querySelector("figcaption");
      if (caption) caption.textContent = captioned ? name : "";
    }
    return canvas;
  }

  private stripFor(label: string): PanelStrip {
    const existing = this.strips.get(label);
    if (existing) return existing;
    const strip = new PanelStrip(label);
    this.strips.set(label, strip);
    // The first frames are panels: the empty canvas waiting for a single picture goes.
    if (this.canvases.size === 0) this.framesEl.querySelector("figure:not(.panel)")?.remove();
    this.framesEl.insertBefore(strip.element, this.waitingEl);
    for (const [name, { top, step }] of this.tops) strip.setTops({ [name]: top }, step);
    for (const [name, note] of this.notes) strip.setNote(name, note);
    return strip;
  }

  /** The newest top classes of the panels a `predictions` event names, under those panels (now, and in a
   * strip made later: a late viewer's frames may be drawn after their lists came); the others keep theirs. */
  setTops(tops: Record<string, TopClass[]>, step: number | null): void {
    for (const [name, top] of Object.entries(tops))
      if (Array.isArray(top)) this.tops.set(name, { top, step });
    for (const strip of this.strips.values()) strip.setTops(tops, step);
  }

  /** A note in the caption of every panel called `name`, e.g. the perturbation's amplification. */
  setPanelNote(name: string, note: string): void {
    this.notes.set(name, note);
    for (const strip of this.strips.values()) strip.setNote(name, note);
  }

  /** A method's own view (an attack's summary, an interactive demo), above the results; null: none. */
  showMethodView(title: string, view: HTMLElement | null): void {
    replaceChildren(this.methodViewEl, view && h("h3", {}, title), view);
    this.methodViewEl.hidden = !view;
  }

  frameDrawn(): void {
    this.waitingEl.hidden = true;
  }

  /** For a method that streams no frames (its own view draws what it computes): no empty frame box. */
  hideFrames(): void {
    this.framesEl.hidden = true;
  }

  ended(state: JobState, result: JobResult | null): void {
    if (state === "done") this.completeProgress();
    if (result || state === "done") this.setResults(result);
    this.chartEmptyEl.textContent = "no metrics reported";
  }

  /** The interactive code map (a data set's images at their streamed points), above the results. */
  showCodeMap(view: HTMLElement): void {
    replaceChildren(this.codeMapEl, h("h3", {}, "Code map"), view);
    this.codeMapEl.hidden = false;
  }

  /** The interactive view of a finished attribution map (or nothing), above the result links. */
  showAttribution(view: HTMLElement | null): void {
    replaceChildren(this.attributionEl, view && h("h3", {}, "Attribution map"), view);
    this.attributionEl.hidden = !view;
  }

  private showStep(): void {
    const progress = this.progress;
    if (!progress) {
      this.stepEl.textContent = "";
      return;
    }
    const { step, total } = progress;
    // Between the last step and "done" the server writes the result files (a GIF can take a while).
    const saving = this.state === "running" && total > 0 && step >= total;
    const rate = this.stepsPerSecond();
    const speed = rate === null || saving ? "" : ` · ${rate >= 10 ? rate.toFixed(0) : rate.toFixed(1)} it/s`;
    this.stepEl.textContent = `${step} / ${total}${speed}${saving ? " · saving results…" : ""}`;
  }

  /** Steps per second over the recent steps, by the server's clock; null until there are two. */
  private stepsPerSecond(): number | null {
    const first = this.stepTimes[0];
    const last = this.stepTimes.at(-1);
    if (!first || !last || last.time <= first.time) return null;
    return (last.step - first.step) / (last.time - first.time);
  }

  private setPredictions(predictions: Prediction[]): void {
    showTopClasses(this.predictionsEl, predictions);
  }

  /** A button that makes the result image `name` the page's picture (`job:<id>:<name>`, the API's id of it). */
  private useAsPicture(name: string): HTMLElement {
    const button = h(
      "button",
      { type: "button", class: "use-image", "data-testid": "use-as-picture", "data-image": name },
      "use as picture",
    );
    button.addEventListener("click", () => {
      const detail = { image: jobImageId(this.jobId, name) };
      button.dispatchEvent(new CustomEvent("convlens-open-image", { detail, bubbles: true, composed: true }));
    });
    return button;
  }

  private setResults(result: JobResult | null): void {
    const link = (path: string, text: string, testid?: string) =>
      h("a", { href: serverUrl(this.server, path), target: "_blank", "data-testid": testid }, text);
    const id = encodeURIComponent(this.jobId);
    const images = Object.entries(result?.images ?? {});
    replaceChildren(
      this.resultsEl,
      h("h3", {}, "Results"),
      h(
        "div",
        { class: "links" },
        link(`/api/jobs/${id}/result`, "result.json", "result-json"),
        link(`/api/jobs/${id}/frames/latest`, "last frame"),
        typeof result?.animation === "string" && link(result.animation, "GIF", "animation"),
        typeof result?.animation === "string" &&
          link(`/api/jobs/${id}/frames.webm`, "WebM", "animation-webm"),
        ...Object.entries(result?.array_urls ?? {}).map(([name, url]) =>
          link(url, `${name}.npy`, "result-array"),
        ),
        // A finished run only: the server answers 409 before (the report is of its result files).
        this.state === "done" &&
          h(
            "a",
            {
              href: serverUrl(this.server, `/api/jobs/${id}/report.html?download=1`),
              download: `convlens-${result?.method ?? "run"}-${this.jobId}.html`,
              title: "one self-contained HTML file: images, charts, parameters, model hash",
              "data-testid": "report",
            },
            "Report",
          ),
      ),
      images.length > 0 &&
        h(
          "div",
          { class: "images" },
          ...images.map(([name, url]) => {
            const href = serverUrl(this.server, url);
            return h(
              "figure",
              {},
              h(
                "a",
                { href, target: "_blank", "data-testid": "result-image", title: name },
                h("img", { src: href, alt: name, loading: "lazy" }),
                name,
              ),
              this.useAsPicture(name),
            );
          }),
        ),
    );
    this.resultsEl.hidden = false;
  }
}
