// Deep Image Prior, live, drawn with uPlot from the job's metrics as they arrive:
// - deep_image_prior: the restoration's PSNR against the clean picture by step, the corrupted picture's PSNR
//   as a dashed reference line, the best so far as a dot and its label, the loss on a second, log, axis; and
//   "Stop and keep the best": the method sends its result at every shown step, so a stop ends the job "done"
//   with the best picture and its step.
// - deep_image_prior_curves: the paper's Figure 2, the four targets' losses in one log chart with a legend.
//
// uPlot draws the charts: fast canvas line charts, about 50 kB, no dependencies.

import uPlot from "uplot";
import uplotCss from "uplot/dist/uPlot.min.css?inline";
import type { ApiClient, Job, JobResult, JobState } from "./api";
import { ApiError, TERMINAL_STATES } from "./api";
import { h } from "./dom";
import type { MetricsPoint } from "./metrics-chart";

export const DIP_METHOD = "deep_image_prior";
export const DIP_CURVES_METHOD = "deep_image_prior_curves";

export const DIP_COLOURS = {
  psnr: "rgb(31, 119, 180)",
  reference: "rgb(100, 100, 100)",
  best: "rgb(214, 39, 40)",
  loss: "rgb(255, 127, 14)",
} as const;

/** The curves' targets as the method names its metrics, their legend labels and colours. */
export const CURVES = [
  { metric: "image", label: "natural image", colour: "rgb(44, 160, 44)" },
  { metric: "image + noise", label: "natural image + noise", colour: "rgb(31, 119, 180)" },
  { metric: "scrambled", label: "scrambled pixels", colour: "rgb(255, 127, 14)" },
  { metric: "white noise", label: "white noise", colour: "rgb(148, 103, 189)" },
] as const;

const WIDTH = 640;
const HEIGHT = 300;
const MAX_POINTS = 5000;

const css = `
.dip { display: grid; gap: 0.5rem; }
.dip .best { margin: 0; font-size: 1.1rem; font-weight: 600; }
.dip .note { margin: 0; font-size: 0.85rem; }
.dip .u-legend { font-size: 0.85rem; }
`;

/** Axes readable on the light and the dark theme alike (a canvas cannot read the page's CSS variables). */
const AXIS = { stroke: "#9aa0a6", grid: { stroke: "rgba(128, 128, 128, 0.2)" }, ticks: { show: false } };

/** "best: 27.3 dB at step 340". */
export function bestLabel(psnr: number, step: number): string {
  return `best: ${psnr.toFixed(1)} dB at step ${step}`;
}

/** A view of one job's metrics, fed by the job view. */
export interface DipView {
  readonly title: string;
  readonly element: HTMLElement;
  add(points: MetricsPoint[]): void;
  setHistory(points: MetricsPoint[]): void;
  ended(state: JobState, result: JobResult | null): void;
  dispose(): void;
}

/** The view for `job`'s method, or null if it is neither Deep Image Prior method. */
export function dipView(api: ApiClient, job: Job): DipView | null {
  if (job.method === DIP_METHOD) return new RestorationChart(api, job.id);
  if (job.method === DIP_CURVES_METHOD) return new CurvesChart();
  return null;
}

/** Points by step, in step order: a point at a step already held replaces it (a history after live ones). */
class Steps {
  readonly steps: number[] = [];
  readonly values: Record<string, number>[] = [];

  clear(): void {
    this.steps.length = 0;
    this.values.length = 0;
  }

  add(points: MetricsPoint[]): void {
    for (const { step, values } of points) {
      if (step === null || !Number.isFinite(step)) continue;
      const last = this.steps.at(-1);
      if (last !== undefined && step < last) continue;
      if (step === last) this.values[this.values.length - 1] = values;
      else if (this.steps.length < MAX_POINTS) {
        this.steps.push(step);
        this.values.push(values);
      }
    }
  }

  column(name: string): (number | null)[] {
    return this.values.map((values) => (Number.isFinite(values[name]) ? values[name] : null));
  }
}

class RestorationChart implements DipView {
  readonly title = "Deep Image Prior: PSNR against the clean picture";
  readonly element: HTMLElement;
  private readonly points = new Steps();
  private readonly slot: HTMLElement;
  private readonly label: HTMLElement;
  private readonly stopButton: HTMLButtonElement;
  private readonly note: HTMLElement;
  private chart: uPlot | null = null;
  private frame = 0;
  /** The best PSNR and its step: the streamed peak, then the result's. */
  private best: { psnr: number; step: number } | null = null;
  private final = false;

  constructor(
    private readonly api: ApiClient,
    private readonly job: string,
  ) {
    this.slot = h("div", {});
    this.label = h("p", { class: "best", "data-testid": "dip-best" });
    this.stopButton = h(
      "button",
      { type: "button", class: "primary", "data-testid": "dip-stop-best" },
      "Stop and keep the best",
    );
    this.note = h(
      "p",
      { class: "note", "data-testid": "dip-note" },
      "The dashed line is the corrupted picture's PSNR: the restoration beats it, peaks, then falls as the " +
        "net learns the corruption.",
    );
    this.element = h(
      "div",
      { class: "dip", "data-testid": "dip-view" },
      h("style", {}, uplotCss + css),
      this.label,
      this.slot,
      h("div", {}, this.stopButton),
      this.note,
    );
    this.stopButton.addEventListener("click", () => void this.stopAtBest());
  }

  add(points: MetricsPoint[]): void {
    this.points.add(points);
    this.schedule();
  }

  setHistory(points: MetricsPoint[]): void {
    this.points.clear();
    this.add(points);
  }

  ended(state: JobState, result: JobResult | null): void {
    this.stopButton.hidden = TERMINAL_STATES.has(state);
    const psnr = result?.data?.psnr_best;
    const step = result?.data?.best_step;
    if (typeof psnr === "number" && typeof step === "number") {
      this.best = { psnr, step };
      this.final = true;
    }
    this.schedule();
  }

  dispose(): void {
    cancelAnimationFrame(this.frame);
    this.chart?.destroy();
  }

  private schedule(): void {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  /** Stops the job: its newest result, sent at the last shown step, holds the best picture so far. */
  private async stopAtBest(): Promise<void> {
    this.stopButton.disabled = true;
    try {
      await this.api.stopJob(this.job);
      this.note.textContent = "Stopped: the result keeps the best picture and its step.";
    } catch (error) {
      this.stopButton.disabled = false;
      this.note.textContent =
        error instanceof ApiError ? `Not stopped: ${error.field} — ${error.reason}` : String(error);
    }
  }

  private render(): void {
    this.frame = 0;
    const steps = this.points.steps;
    const psnr = this.points.column("psnr");
    if (!this.final) {
      let index = -1;
      psnr.forEach((value, i) => {
        if (value !== null && (index < 0 || value > (psnr[index] as number))) index = i;
      });
      this.best = index < 0 ? null : { psnr: psnr[index] as number, step: steps[index] };
    }
    const best = this.best;
    const dot = steps.map((step, i) => (best && step === best.step ? (psnr[i] ?? best.psnr) : null));
    const reference = this.points.column("corrupted psnr");
    const data = [steps, psnr, reference, dot, this.points.column("loss")] as uPlot.AlignedData;
    if (this.chart) this.chart.setData(data);
    else this.chart = new uPlot(this.options(), data, this.slot);
    this.label.textContent = best ? bestLabel(best.psnr, best.step) : "";
    const dataset = this.element.dataset;
    dataset.points = String(steps.length);
    // The value the dashed line is drawn at (the streamed one, the same at every step).
    dataset.reference = String(reference.filter((value) => value !== null).at(-1) ?? "");
    dataset.bestPsnr = best ? String(best.psnr) : "";
    dataset.bestStep = best ? String(best.step) : "";
    dataset.final = String(this.final);
  }

  private options(): uPlot.Options {
    return {
      width: WIDTH,
      height: HEIGHT,
      cursor: { show: false },
      legend: { show: true, live: false },
      scales: { x: { time: false }, dB: {}, loss: { distr: 3 } },
      axes: [
        { ...AXIS, label: "step" },
        { ...AXIS, scale: "dB", label: "PSNR (dB)" },
        { ...AXIS, scale: "loss", label: "loss (log)", side: 1, grid: { show: false } },
      ],
      series: [
        {},
        { label: "PSNR", scale: "dB", stroke: DIP_COLOURS.psnr, width: 2 },
        {
          label: "corrupted",
          scale: "dB",
          stroke: DIP_COLOURS.reference,
          width: 1.5,
          dash: [8, 6],
          points: { show: false },
        },
        {
          label: "best",
          scale: "dB",
          stroke: DIP_COLOURS.best,
          fill: DIP_COLOURS.best,
          paths: () => null,
          points: { show: true, size: 10, fill: DIP_COLOURS.best, stroke: DIP_COLOURS.best },
        },
        { label: "loss", scale: "loss", stroke: DIP_COLOURS.loss, width: 1 },
      ],
      hooks: {
        init: [(chart) => chart.root.setAttribute("data-testid", "dip-chart")],
        draw: [(chart) => this.drawBestLabel(chart)],
      },
    };
  }

  /** The best point's label beside its dot, on the canvas, so a projected chart carries it. */
  private drawBestLabel(chart: uPlot): void {
    const best = this.best;
    if (!best) return;
    const x = chart.valToPos(best.step, "x", true);
    const y = chart.valToPos(best.psnr, "dB", true);
    const context = chart.ctx;
    const ratio = window.devicePixelRatio || 1;
    const rightHalf = x > chart.bbox.left + chart.bbox.width / 2;
    const nearTop = y - chart.bbox.top < 24 * ratio; // the label goes under a dot at the top, not off the plot
    context.save();
    context.font = `${Math.round(12 * ratio)}px sans-serif`;
    context.fillStyle = DIP_COLOURS.best;
    context.textAlign = rightHalf ? "right" : "left";
    context.textBaseline = nearTop ? "top" : "bottom";
    const offset = (nearTop ? 8 : -6) * ratio;
    context.fillText(bestLabel(best.psnr, best.step), x + (rightHalf ? -8 : 8) * ratio, y + offset);
    context.restore();
  }
}

class CurvesChart implements DipView {
  readonly title = "Deep Image Prior: learning curves (the paper's Figure 2)";
  readonly element: HTMLElement;
  private readonly points = new Steps();
  private readonly slot: HTMLElement;
  private chart: uPlot | null = null;
  private frame = 0;

  constructor() {
    this.slot = h("div", {});
    this.element = h(
      "div",
      { class: "dip", "data-testid": "dip-curves" },
      h("style", {}, uplotCss + css),
      this.slot,
      h(
        "p",
        { class: "note" },
        "The same net from the same start fitted to each target: the natural image's loss falls fastest; " +
          "white noise, with no structure to find, barely falls.",
      ),
    );
  }

  add(points: MetricsPoint[]): void {
    this.points.add(points);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  setHistory(points: MetricsPoint[]): void {
    this.points.clear();
    this.add(points);
  }

  ended(): void {}

  dispose(): void {
    cancelAnimationFrame(this.frame);
    this.chart?.destroy();
  }

  private render(): void {
    this.frame = 0;
    const columns = CURVES.map(({ metric }) => this.points.column(metric));
    const data = [this.points.steps, ...columns] as uPlot.AlignedData;
    if (this.chart) this.chart.setData(data);
    else this.chart = new uPlot(this.options(), data, this.slot);
    const counts = Object.fromEntries(
      CURVES.map(({ label }, i) => [label, columns[i].filter((value) => value !== null).length]),
    );
    this.element.dataset.points = JSON.stringify(counts);
  }

  private options(): uPlot.Options {
    return {
      width: WIDTH,
      height: HEIGHT,
      cursor: { show: false },
      legend: { show: true, live: false },
      scales: { x: { time: false }, y: { distr: 3 } },
      axes: [
        { ...AXIS, label: "step" },
        { ...AXIS, label: "loss (log)" },
      ],
      series: [{}, ...CURVES.map(({ label, colour }) => ({ label, stroke: colour, width: 2 }))],
      hooks: { init: [(chart) => chart.root.setAttribute("data-testid", "dip-curves-chart")] },
    };
  }
}
