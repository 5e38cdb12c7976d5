// A live line chart of a job's metrics on one canvas: a row per metric name,
// each with its own vertical scale (a loss and a probability rarely share one).
// Each row's header (name, newest value, range) is text laid over the canvas, so
// a long name ends in an ellipsis (in full in its tooltip) and never runs into the numbers.

import { formatNumber, h, Throttle } from "./dom";

export interface MetricsPoint {
  step: number | null;
  values: Record<string, number>;
}

interface Series {
  steps: number[];
  values: number[];
}

/** A row's header: the metric's name, its newest value and the range the row's plot spans. */
interface Header {
  element: HTMLElement;
  name: HTMLElement;
  value: HTMLElement;
  range: HTMLElement;
}

const ROW_HEIGHT = 72;
const PALETTE = ["#5aa9ff", "#f2a541", "#6fd08c", "#e86a92", "#b892ff", "#4fd1c5", "#f6e05e", "#ff8a65"];
const MAX_POINTS = 5000;
/** Redraws at most this often: a job sends up to 10 times a second by default, and on a machine the viewer shares with
 * the job every redraw (software rendering, no GPU) takes CPU from the job's steps. */
const REDRAW_MS = 100;

export class MetricsChart {
  private readonly series = new Map<string, Series>();
  /** The rows' headers, over the canvas (placed after it, in its parent). */
  readonly labels: HTMLElement = h("div", { class: "chart-labels", "data-testid": "chart-labels" });
  private readonly headers = new Map<string, Header>();
  private pointCount = 0;
  private frame = 0;
  private readonly redraw = new Throttle(REDRAW_MS, () => {
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  });
  private grid: string | null = null;
  private readonly resize: ResizeObserver;

  constructor(
    readonly canvas: HTMLCanvasElement,
    private readonly onChange: (names: string[]) => void = () => {},
  ) {
    this.resize = new ResizeObserver(() => {
      this.grid = null; // the page's theme may have changed with it
      this.schedule();
    });
    this.resize.observe(canvas);
    canvas.after(this.labels);
  }

  get names(): string[] {
    return [...this.series.keys()];
  }

  clear(): void {
    this.series.clear();
    this.dropHeaders();
    this.pointCount = 0;
    this.onChange(this.names);
    this.schedule();
  }

  setHistory(history: MetricsPoint[]): void {
    this.series.clear();
    this.dropHeaders();
    this.pointCount = 0;
    for (const point of history) this.record(point);
    this.onChange(this.names);
    this.schedule();
  }

  add(point: MetricsPoint): void {
    const before = this.series.size;
    this.record(point);
    if (this.series.size !== before) this.onChange(this.names);
    this.schedule();
  }

  dispose(): void {
    this.resize.disconnect();
    this.redraw.cancel();
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.labels.remove();
  }

  private dropHeaders(): void {
    this.headers.clear();
    this.labels.replaceChildren();
  }

  /** The header of row `row` (made on first use) showing `name`, `value` and the range `low … high`. */
  private showHeader(name: string, row: number, colour: string, value: number, low: number, high: number) {
    let header = this.headers.get(name);
    if (!header) {
      const nameEl = h("span", { class: "name", "data-testid": "chart-name", title: name }, name);
      const valueEl = h("span", { class: "value", "data-testid": "chart-value" });
      const rangeEl = h("span", { class: "range", "data-testid": "chart-range" });
      // Rows only ever come after the others (a chart is cleared whole), so its place and colour stay.
      const style = `top:${row * ROW_HEIGHT}px;color:${colour}`;
      const element = h(
        "div",
        { class: "chart-label", "data-metric": name, style },
        nameEl,
        valueEl,
        rangeEl,
      );
      header = { element, name: nameEl, value: valueEl, range: rangeEl };
      this.headers.set(name, header);
      this.labels.append(element);
    }
    const shown = formatNumber(value);
    if (header.value.textContent !== shown) header.value.textContent = shown;
    const range = `${formatNumber(low)} … ${formatNumber(high)}`;
    if (header.range.textContent !== range) header.range.textContent = range;
  }

  private record(point: MetricsPoint): void {
    const step = point.step ?? this.pointCount;
    this.pointCount += 1;
    for (const [name, value] of Object.entries(point.values)) {
      if (typeof value !== "number" || !Number.isFinite(value)) continue;
      let series = this.series.get(name);
      if (!series) {
        series = { steps: [], values: [] };
        this.series.set(name, series);
      }
      // A viewer that subscribes between two sends gets the newest points twice (history, then the send).
      if (series.steps.at(-1) === step && series.values.at(-1) === value) continue;
      series.steps.push(step);
      series.values.push(value);
      if (series.steps.length > MAX_POINTS) {
        // Keep every other point of the older half: the shape stays, memory stays bounded.
        const half = Math.floor(series.steps.length / 2);
        series.steps = series.steps
          .slice(0, half)
          .filter((_, i) => i % 2 === 0)
          .concat(series.steps.slice(half));
        series.values = series.values
          .slice(0, half)
          .filter((_, i) => i % 2 === 0)
          .concat(series.values.slice(half));
      }
    }
  }

  /** Redraw at the next animation frame, at most every REDRAW_MS (a pending redraw takes new points too). */
  private schedule(): void {
    if (!this.frame) this.redraw.request();
  }

  private draw(): void {
    const canvas = this.canvas;
    const names = this.names;
    const ratio = window.devicePixelRatio || 1;
    const cssWidth = Math.max(canvas.clientWidth, 160);
    const cssHeight = Math.max(names.length, 1) * ROW_HEIGHT;
    // Only a new size reallocates the canvas and lays out the page again.
    if (canvas.style.height !== `${cssHeight}px`) canvas.style.height = `${cssHeight}px`;
    const width = Math.round(cssWidth * ratio);
    const height = Math.round(cssHeight * ratio);
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    const context = canvas.getContext("2d");
    if (!context) return;
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, cssWidth, cssHeight);
    this.grid ??= getComputedStyle(canvas).getPropertyValue("--cl-grid").trim() || "rgba(255,255,255,0.08)";
    const grid = this.grid;

    names.forEach((name, row) => {
      const series = this.series.get(name) as Series;
      const colour = PALETTE[row % PALETTE.length];
      const top = row * ROW_HEIGHT;
      const plot = { left: 4, right: cssWidth - 4, top: top + 18, bottom: top + ROW_HEIGHT - 8 };
      let low = Infinity;
      let high = -Infinity;
      for (const value of series.values) {
        if (value < low) low = value;
        if (value > high) high = value;
      }
      if (high - low < 1e-12) {
        const pad = Math.abs(high) * 0.05 || 1;
        low -= pad;
        high += pad;
      }
      const first = series.steps[0];
      const last = series.steps[series.steps.length - 1];
      const span = last - first || 1;
      const x = (step: number) => plot.left + ((step - first) / span) * (plot.right - plot.left);
      const y = (value: number) => plot.bottom - ((value - low) / (high - low)) * (plot.bottom - plot.top);

      context.strokeStyle = grid;
      context.lineWidth = 1;
      context.strokeRect(
        plot.left + 0.5,
        plot.top + 0.5,
        plot.right - plot.left - 1,
        plot.bottom - plot.top - 1,
      );

      this.showHeader(name, row, colour, series.values[series.values.length - 1], low, high);

      context.strokeStyle = colour;
      context.lineWidth = 1.75;
      context.lineJoin = "round";
      context.beginPath();
      // About two points per pixel column are all a line can show (the last point always drawn).
      const stride = Math.max(1, Math.floor(series.steps.length / (2 * (plot.right - plot.left))));
      for (let i = 0; i < series.steps.length; i += 1) {
        if (i % stride !== 0 && i !== series.steps.length - 1) continue;
        const px = x(series.steps[i]);
        const py = y(series.values[i]);
        if (i === 0) context.moveTo(px, py);
        else context.lineTo(px, py);
      }
      if (series.steps.length === 1) context.arc(x(first), y(series.values[0]), 2, 0, Math.PI * 2);
      context.stroke();
    });
  }
}
