// Universal approximation (deck 000), live: the target, the net's sum and each unit's contribution on
// [-1, 1], the error |sum − target| along x, and the same net on [-3, 3] ("compact domains"), drawn with
// uPlot from the job's Points as they arrive (x, y pairs, not pictures). A drawing surface turns a drag
// into the `points` parameter ("x,y; x,y; …") and starts a run on that drawn target.
//
// uPlot draws the charts: fast canvas line charts, about 50 kB, no dependencies.

import uPlot from "uplot";
import uplotCss from "uplot/dist/uPlot.min.css?inline";
import type { ApiClient, Job } from "./api";
import { ApiError } from "./api";
import { h } from "./dom";
import type { OpenMethod } from "./job-view";

export const APPROXIMATION_METHOD = "universal_approximation";

export const COLOURS = {
  target: "rgb(31, 119, 180)",
  sum: "rgb(214, 39, 40)",
  unit: "rgba(110, 110, 110, 0.35)",
  error: "rgb(44, 160, 44)",
} as const;

/** The drawing surface's data range: x as the method's interval, y wide enough for the presets. */
export const DRAW_RANGE = { xMin: -1, xMax: 1, yMin: -1.5, yMax: 1.5 } as const;
const DRAW_WIDTH = 480;
const DRAW_HEIGHT = 200;
const CHART_WIDTH = 560;
const CHART_HEIGHT = 260;
const SMALL_HEIGHT = 160;
const MAX_DRAWN_POINTS = 200;

const css = `
.approximation { display: grid; gap: 0.75rem; }
.approximation h4 { margin: 0.25rem 0; font-size: 0.9rem; }
.approximation canvas.draw { border: 1px solid #bbb; cursor: crosshair; touch-action: none; background: #fff; }
.approximation .note { margin: 0; font-size: 0.85rem; }
`;

/** `xy` (x0, y0, x1, y1, …) as its x and its y. */
function split(xy: Float32Array): [number[], number[]] {
  const xs: number[] = [];
  const ys: number[] = [];
  for (let i = 0; i + 1 < xy.length; i += 2) {
    xs.push(xy[i]);
    ys.push(xy[i + 1]);
  }
  return [xs, ys];
}

/** The units' contributions, one unit after another over the same x: a new unit starts where x goes back. */
export function unitCurves(xy: Float32Array): number[][] {
  const curves: number[][] = [];
  let current: number[] = [];
  for (let i = 0; i + 1 < xy.length; i += 2) {
    if (i > 0 && xy[i] < xy[i - 2]) {
      curves.push(current);
      current = [];
    }
    current.push(xy[i + 1]);
  }
  if (current.length > 0) curves.push(current);
  return curves;
}

/** A stroke in data coordinates as the `points` parameter: sorted by x, one y per x (the last drawn), at
 * most MAX_DRAWN_POINTS, inside the drawing range. */
export function pointsParam(stroke: [number, number][]): string {
  const byX = new Map<string, [number, number]>();
  for (const [x, y] of stroke) {
    const cx = Math.min(DRAW_RANGE.xMax, Math.max(DRAW_RANGE.xMin, x));
    const cy = Math.min(DRAW_RANGE.yMax, Math.max(DRAW_RANGE.yMin, y));
    byX.set(cx.toFixed(4), [cx, cy]);
  }
  let points = [...byX.values()].sort((a, b) => a[0] - b[0]);
  if (points.length > MAX_DRAWN_POINTS) {
    const stride = points.length / MAX_DRAWN_POINTS;
    points = Array.from({ length: MAX_DRAWN_POINTS }, (_, i) => points[Math.floor(i * stride)]);
  }
  return points.map(([x, y]) => `${x.toFixed(4)},${y.toFixed(4)}`).join("; ");
}

/** Axes readable on the light and the dark theme alike (a canvas cannot read the page's CSS variables). */
const AXIS = { stroke: "#9aa0a6", grid: { stroke: "rgba(128, 128, 128, 0.2)" }, ticks: { show: false } };

/** The least and greatest of `values` widened by a tenth of their spread (a flat curve by 0.5). */
export function padded(...values: ArrayLike<number | null>[]): [number, number] {
  let low = Infinity;
  let high = -Infinity;
  for (const list of values)
    for (let i = 0; i < list.length; i++) {
      const value = list[i];
      if (value === null || !Number.isFinite(value)) continue;
      low = Math.min(low, value);
      high = Math.max(high, value);
    }
  if (!Number.isFinite(low)) return [-1, 1];
  const margin = high > low ? (high - low) / 10 : 0.5;
  return [low - margin, high + margin];
}

function chartOptions(
  title: string,
  height: number,
  series: uPlot.Series[],
  testid: string,
  yRange?: () => [number, number],
): uPlot.Options {
  return {
    title,
    width: CHART_WIDTH,
    height,
    legend: { show: false },
    cursor: { show: false },
    scales: { x: { time: false }, y: yRange ? { range: () => yRange() } : {} },
    axes: [AXIS, AXIS],
    series: [{}, ...series],
    hooks: { init: [(chart) => chart.root.setAttribute("data-testid", testid)] },
  };
}

export class ApproximationView {
  readonly element: HTMLElement;
  private readonly curves = new Map<string, Float32Array>();
  private readonly steps = new Map<string, number | null>();
  private readonly mainSlot: HTMLElement;
  private readonly errorSlot: HTMLElement;
  private readonly outsideSlot: HTMLElement;
  private readonly drawCanvas: HTMLCanvasElement;
  private readonly drawNote: HTMLElement;
  private main: uPlot | null = null;
  private mainUnits = -1;
  /** The main chart's y range: the target's and the sum's, so units far beyond them do not squash the curve. */
  private mainRange: [number, number] = [-1, 1];
  private error: uPlot | null = null;
  private outside: uPlot | null = null;
  private frame = 0;
  private stroke: [number, number][] = [];
  private drawing = false;

  constructor(
    private readonly api: ApiClient,
    private readonly job: Job,
    private readonly started: (job: Job) => void,
  ) {
    this.mainSlot = h("div", {});
    this.errorSlot = h("div", {});
    this.outsideSlot = h("div", {});
    this.drawCanvas = h("canvas", {
      class: "draw",
      width: DRAW_WIDTH,
      height: DRAW_HEIGHT,
      "data-testid": "approx-draw",
      "data-x-min": DRAW_RANGE.xMin,
      "data-x-max": DRAW_RANGE.xMax,
      "data-y-min": DRAW_RANGE.yMin,
      "data-y-max": DRAW_RANGE.yMax,
      "aria-label": "draw a target curve",
    });
    this.drawNote = h(
      "p",
      { class: "note", "data-testid": "approx-draw-note" },
      "Drag across the box to draw a target on [-1, 1]; letting go runs the same net on it.",
    );
    this.element = h(
      "div",
      { class: "approximation", "data-testid": "approximation" },
      h("style", {}, uplotCss + css),
      this.mainSlot,
      this.errorSlot,
      this.outsideSlot,
      h("h4", {}, "Draw a target"),
      this.drawCanvas,
      this.drawNote,
    );
    this.listen();
    this.paintSurface();
  }

  /** The newest Points of `label` ("target", "sum", "units", "outside target", "outside sum"). */
  setPoints(label: string, xy: Float32Array, step: number | null): void {
    this.curves.set(label, xy);
    this.steps.set(label, step);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  dispose(): void {
    cancelAnimationFrame(this.frame);
    this.main?.destroy();
    this.error?.destroy();
    this.outside?.destroy();
  }

  private render(): void {
    this.frame = 0;
    const target = this.curves.get("target");
    const sum = this.curves.get("sum");
    if (!target) return;
    const [xs, targetY] = split(target);
    const sumY = sum ? split(sum)[1] : xs.map(() => null);
    const unitsXy = this.curves.get("units");
    const units = unitsXy ? unitCurves(unitsXy) : [];
    // The units first, so their faint lines lie under the target (wide, so it shows beside the sum) and the sum.
    const data = [xs, ...units, targetY, sumY] as uPlot.AlignedData;
    this.mainRange = padded(targetY, sumY);
    if (!this.main || units.length !== this.mainUnits) {
      this.main?.destroy();
      const series: uPlot.Series[] = [
        ...units.map((_, i) => ({ label: `unit ${i + 1}`, stroke: COLOURS.unit, width: 1 })),
        { label: "target", stroke: COLOURS.target, width: 6 },
        { label: "sum", stroke: COLOURS.sum, width: 2 },
      ];
      const title = `Target, sum and ${units.length} units on [-1, 1]`;
      this.main = new uPlot(
        chartOptions(title, CHART_HEIGHT, series, "approx-chart", () => this.mainRange),
        data,
        this.mainSlot,
      );
      this.mainUnits = units.length;
    } else {
      this.main.setData(data);
    }
    const errorY = sum ? xs.map((_, i) => Math.abs((sumY[i] as number) - targetY[i])) : xs.map(() => null);
    this.error ??= new uPlot(
      chartOptions(
        "|sum − target| on [-1, 1]",
        SMALL_HEIGHT,
        [{ label: "error", stroke: COLOURS.error, width: 2 }],
        "approx-error-chart",
      ),
      [xs, errorY] as uPlot.AlignedData,
      this.errorSlot,
    );
    this.error.setData([xs, errorY] as uPlot.AlignedData);
    const wideTarget = this.curves.get("outside target");
    const wideSum = this.curves.get("outside sum");
    if (wideTarget) {
      const [wx, wt] = split(wideTarget);
      const ws = wideSum ? split(wideSum)[1] : wx.map(() => null);
      const wide = [wx, wt, ws] as uPlot.AlignedData;
      this.outside ??= new uPlot(
        chartOptions(
          "Outside the interval: [-3, 3]",
          SMALL_HEIGHT,
          [
            { label: "target", stroke: COLOURS.target, width: 4 },
            { label: "sum", stroke: COLOURS.sum, width: 2 },
          ],
          "approx-outside-chart",
        ),
        wide,
        this.outsideSlot,
      );
      this.outside.setData(wide);
    }
    this.element.dataset.units = String(units.length);
    this.element.dataset.step = String(this.steps.get("sum") ?? "");
  }

  private dataPoint(event: PointerEvent): [number, number] {
    const box = this.drawCanvas.getBoundingClientRect();
    const u = (event.clientX - box.left) / box.width;
    const v = (event.clientY - box.top) / box.height;
    const { xMin, xMax, yMin, yMax } = DRAW_RANGE;
    return [xMin + u * (xMax - xMin), yMax - v * (yMax - yMin)];
  }

  private listen(): void {
    const canvas = this.drawCanvas;
    canvas.addEventListener("pointerdown", (event) => {
      this.drawing = true;
      canvas.setPointerCapture?.(event.pointerId);
      this.stroke = [this.dataPoint(event)];
      this.paintSurface();
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!this.drawing) return;
      this.stroke.push(this.dataPoint(event));
      this.paintSurface();
    });
    canvas.addEventListener("pointerup", (event) => {
      if (!this.drawing) return;
      this.drawing = false;
      this.stroke.push(this.dataPoint(event));
      this.paintSurface();
      void this.runDrawn();
    });
  }

  private paintSurface(): void {
    const context = this.drawCanvas.getContext("2d");
    if (!context) return;
    const { xMin, xMax, yMin, yMax } = DRAW_RANGE;
    const px = (x: number) => ((x - xMin) / (xMax - xMin)) * DRAW_WIDTH;
    const py = (y: number) => ((yMax - y) / (yMax - yMin)) * DRAW_HEIGHT;
    context.clearRect(0, 0, DRAW_WIDTH, DRAW_HEIGHT);
    context.strokeStyle = "#ddd";
    context.lineWidth = 1;
    context.beginPath();
    context.moveTo(px(0), 0);
    context.lineTo(px(0), DRAW_HEIGHT);
    context.moveTo(0, py(0));
    context.lineTo(DRAW_WIDTH, py(0));
    context.stroke();
    if (this.stroke.length === 0) return;
    context.strokeStyle = COLOURS.target;
    context.lineWidth = 3;
    context.beginPath();
    this.stroke.forEach(([x, y], i) =>
      i === 0 ? context.moveTo(px(x), py(y)) : context.lineTo(px(x), py(y)),
    );
    context.stroke();
  }

  /** The drawn stroke as `points`, filled into the form (`convlens-open-method`) and run at once. */
  private async runDrawn(): Promise<void> {
    const points = pointsParam(this.stroke);
    if (points.split(";").length < 2) {
      this.drawNote.textContent = "Drag sideways: a target needs at least two points of different x.";
      return;
    }
    const params = { ...this.job.params, target: "drawn", points };
    const detail: OpenMethod = { method: APPROXIMATION_METHOD, params };
    this.element.dispatchEvent(
      new CustomEvent("convlens-open-method", { detail, bubbles: true, composed: true }),
    );
    try {
      const job = await this.api.startJob({
        method: APPROXIMATION_METHOD,
        model: this.job.model,
        image: this.job.image,
        params,
        seed: this.job.seed,
      });
      this.started(job);
    } catch (error) {
      this.drawNote.textContent =
        error instanceof ApiError ? `Not started: ${error.field} — ${error.reason}` : String(error);
    }
  }
}
