// Handwritten digits trained live (deck 003): each net's loss and train/test accuracy per epoch on two uPlot
// charts as the metrics arrive (the weight templates stream as frames, drawn by the frame painter); when the
// run is done, each net's confusion matrix and a pad to draw a digit on, turned into the nets' input as the data
// set's digits were made (`result.data.drawing`), with each net's ten probabilities as bars, asked of the
// trained models (`POST /api/models/<id>/predict`) while you draw.

import uPlot from "uplot";
import uplotCss from "uplot/dist/uPlot.min.css?inline";
import type { ApiClient, Job, JobResult, Prediction } from "./api";
import { ApiError } from "./api";
import { confusionMatrix } from "./confusion-matrix";
import { h, replaceChildren, Throttle } from "./dom";
import { type Drawing, DRAWING_SIZE, DrawingPad } from "./drawing-pad";
import type { MetricsPoint } from "./metrics-chart";
import css from "./styles/digits.css?inline";

export const DIGITS_METHOD = "digits";

/** Each net's colour on both charts; train accuracy dashed, test accuracy solid. */
export const NET_COLOURS: Record<string, string> = {
  one_layer: "rgb(31, 119, 180)",
  two_layer: "rgb(255, 127, 14)",
};
const OTHER_COLOURS = ["rgb(44, 160, 44)", "rgb(148, 103, 189)"];
const NET_TITLES: Record<string, string> = { one_layer: "1 layer", two_layer: "2 layers" };
const CHART_WIDTH = 440;
const CHART_HEIGHT = 220;
/** Predictions asked while drawing at most this often; a stroke's end asks at once. */
const PREDICT_MS = 120;
const PREVIEW_SCALE = 12;
/** Epoch ticks at whole numbers only. */
const EPOCH_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500];

/** A metric name as `<net>.<metric>` (an unprefixed one is the run's only net, "net"). */
const METRIC = /^(?:(.+)\.)?(loss|train_accuracy|test_accuracy)$/;

interface NetResult {
  test_accuracy: number;
  confusion: number[][];
  misclassified: { index: number; true: number; predicted: number }[];
  /** The saved net's model id; else it is found in the result's `models`. */
  model?: string;
}

interface DigitsData {
  nets: Record<string, NetResult>;
  drawing: Drawing;
  labels: string[];
}

export function isDigitsResult(
  result: JobResult | null | undefined,
): result is JobResult & { data: DigitsData } {
  const data = result?.data as Partial<DigitsData> | undefined;
  return Boolean(
    data &&
    typeof data.nets === "object" &&
    data.nets !== null &&
    (data.drawing === "optdigits" || data.drawing === "mnist"),
  );
}

/** The id of `net`'s saved ONNX file: the result names it (`data.nets[net].model`, or among `models`, the
 * ids of the files the run's end wrote, `<job id>-<net>.onnx`). */
export function netModel(result: JobResult, net: string): string {
  const named = (result.data as Partial<DigitsData>).nets?.[net]?.model;
  if (typeof named === "string") return named;
  const saved = (result as { models?: unknown }).models;
  const ids = Array.isArray(saved) ? saved.filter((id): id is string => typeof id === "string") : [];
  return ids.find((id) => id.endsWith(`-${net}.onnx`)) ?? "";
}

function netTitle(net: string): string {
  return NET_TITLES[net] ?? net;
}

/** Nets in the deck's order: the 1-layer net first. */
function ordered(nets: Iterable<string>): string[] {
  return [...nets].sort((a, b) =>
    a === b ? 0 : a === "one_layer" ? -1 : b === "one_layer" ? 1 : a < b ? -1 : 1,
  );
}

const AXIS = { stroke: "#9aa0a6", grid: { stroke: "rgba(128, 128, 128, 0.2)" }, ticks: { show: false } };

/** The loss and accuracy curves of every net, by epoch. */
class LearningCurves {
  readonly element: HTMLElement;
  /** net → metric → epoch → value. */
  private readonly values = new Map<string, Map<string, Map<number, number>>>();
  private loss: uPlot | null = null;
  private accuracy: uPlot | null = null;
  private shownNets = "";
  private frame = 0;
  private readonly lossSlot = h("div", {});
  private readonly accuracySlot = h("div", {});

  constructor() {
    this.element = h(
      "div",
      { class: "digits-curves", "data-testid": "digits-curves" },
      this.lossSlot,
      this.accuracySlot,
    );
  }

  add(points: MetricsPoint[]): void {
    for (const { step, values } of points) {
      if (step === null || step === undefined) continue;
      for (const [name, value] of Object.entries(values ?? {})) {
        const match = METRIC.exec(name);
        if (!match || !Number.isFinite(value)) continue;
        const net = match[1] ?? "net";
        let metrics = this.values.get(net);
        if (!metrics) this.values.set(net, (metrics = new Map()));
        let series = metrics.get(match[2]);
        if (!series) metrics.set(match[2], (series = new Map()));
        series.set(step, value);
      }
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  reset(history: MetricsPoint[]): void {
    this.values.clear();
    this.add(history);
  }

  dispose(): void {
    cancelAnimationFrame(this.frame);
    this.loss?.destroy();
    this.accuracy?.destroy();
  }

  private render(): void {
    this.frame = 0;
    const nets = ordered(this.values.keys());
    if (nets.length === 0) return;
    const steps = new Set<number>();
    for (const metrics of this.values.values())
      for (const series of metrics.values()) for (const step of series.keys()) steps.add(step);
    const xs = [...steps].sort((a, b) => a - b);
    const column = (net: string, metric: string) => {
      const series = this.values.get(net)?.get(metric);
      return xs.map((step) => series?.get(step) ?? null);
    };
    const colour = (net: string, i: number) => NET_COLOURS[net] ?? OTHER_COLOURS[i % OTHER_COLOURS.length];
    const lossData = [xs, ...nets.map((net) => column(net, "loss"))] as uPlot.AlignedData;
    const accuracyData = [
      xs,
      ...nets.flatMap((net) => [column(net, "train_accuracy"), column(net, "test_accuracy")]),
    ] as uPlot.AlignedData;
    const key = nets.join(",");
    if (key !== this.shownNets) {
      this.loss?.destroy();
      this.accuracy?.destroy();
      this.shownNets = key;
      const lossSeries = nets.map((net, i) => ({
        label: `${netTitle(net)} loss`,
        stroke: colour(net, i),
        width: 2,
      }));
      const accuracySeries = nets.flatMap((net, i) => [
        { label: `${netTitle(net)} train`, stroke: colour(net, i), width: 1.5, dash: [6, 4] },
        { label: `${netTitle(net)} test`, stroke: colour(net, i), width: 2 },
      ]);
      this.loss = new uPlot(
        options("Loss (training, per epoch)", lossSeries, "digits-loss-chart"),
        lossData,
        this.lossSlot,
      );
      this.accuracy = new uPlot(
        options("Accuracy: train dashed, test solid", accuracySeries, "digits-accuracy-chart", [0, 1]),
        accuracyData,
        this.accuracySlot,
      );
    } else {
      this.loss?.setData(lossData);
      this.accuracy?.setData(accuracyData);
    }
    this.element.dataset.epochs = String(xs.at(-1) ?? 0);
  }
}

function options(
  title: string,
  series: uPlot.Series[],
  testid: string,
  range?: [number, number],
): uPlot.Options {
  return {
    title,
    width: CHART_WIDTH,
    height: CHART_HEIGHT,
    legend: { show: true, live: false },
    cursor: { show: false },
    scales: { x: { time: false }, y: range ? { range: () => range } : {} },
    axes: [{ ...AXIS, label: "epoch", incrs: EPOCH_STEPS }, AXIS],
    series: [{}, ...series],
    hooks: { init: [(chart) => chart.root.setAttribute("data-testid", testid)] },
  };
}

/** One net's ten probabilities as bars, in class order. */
class ProbabilityBars {
  readonly element: HTMLElement;
  private readonly rows: { bar: HTMLElement; value: HTMLElement; row: HTMLElement }[];
  /** The input sequence number the bars show; an answer for an older input is dropped. */
  shown = -1;
  /** Answers that came after a newer input's. */
  private dropped = 0;

  constructor(
    readonly net: string,
    readonly model: string,
    labels: string[],
  ) {
    this.rows = labels.map((label, index) => {
      const bar = h("span", { class: "bar" });
      const value = h("span", { class: "value" });
      const row = h(
        "li",
        { "data-index": index },
        h("span", { class: "label" }, label),
        h("span", { class: "track" }, bar),
        value,
      );
      return { bar, value, row };
    });
    this.element = h(
      "section",
      { class: "digit-bars", "data-testid": "digit-bars", "data-net": net, "data-model": model },
      h("h5", {}, netTitle(net)),
      h("ol", {}, ...this.rows.map(({ row }) => row)),
    );
  }

  show(predictions: Prediction[], seq: number): void {
    if (seq <= this.shown) {
      this.dropped += 1;
      this.element.dataset.dropped = String(this.dropped);
      return;
    }
    this.shown = seq;
    const best = predictions.reduce(
      (top, each) => (each.probability > top.probability ? each : top),
      predictions[0],
    );
    for (const { index, probability } of predictions) {
      const row = this.rows[index];
      if (!row) continue;
      row.bar.style.width = `${(probability * 100).toFixed(2)}%`;
      row.value.textContent = `${(probability * 100).toFixed(1)}%`;
      row.row.dataset.probability = String(probability);
      row.row.classList.toggle("top", index === best?.index);
    }
    this.element.dataset.seq = String(seq);
  }
}

/** The digits view: learning curves while the run goes, confusion matrices and the drawing pad when done. */
export class DigitsView {
  readonly element: HTMLElement;
  private readonly curves = new LearningCurves();
  private readonly endSlot = h("div", { class: "digits-end" });
  private finishedJob = false;
  private bars: ProbabilityBars[] = [];
  private preview: HTMLCanvasElement | null = null;
  private note: HTMLElement | null = null;
  private input: number[][] = [];
  private seq = 0;
  private readonly predictSoon = new Throttle(PREDICT_MS, () => this.predict());

  constructor(
    private readonly api: ApiClient,
    readonly job: Job,
  ) {
    this.element = h(
      "div",
      { class: "digits", "data-testid": "digits-view" },
      h("style", {}, uplotCss + css),
      this.curves.element,
      this.endSlot,
    );
  }

  /** Metrics as they arrive. */
  add(points: MetricsPoint[]): void {
    this.curves.add(points);
  }

  /** A (re)subscription's whole history. */
  setHistory(history: MetricsPoint[]): void {
    this.curves.reset(history);
  }

  dispose(): void {
    this.curves.dispose();
    this.predictSoon.cancel();
  }

  /** The finished run's confusion matrices and the drawing pad. */
  finished(result: JobResult | null): void {
    if (this.finishedJob || !isDigitsResult(result)) return;
    this.finishedJob = true;
    const { nets, drawing } = result.data;
    const labels = result.data.labels ?? Array.from({ length: 10 }, (_, i) => String(i));
    const names = ordered(Object.keys(nets));
    const matrices = names.map((net) => {
      const { confusion, test_accuracy, misclassified } = nets[net];
      const caption =
        `${netTitle(net)}: test accuracy ${(test_accuracy * 100).toFixed(1)}%, ` +
        `${misclassified.length} misclassified`;
      const figure = confusionMatrix(confusion, labels, caption);
      figure.dataset.net = net;
      return figure;
    });
    const [height, width] = DRAWING_SIZE[drawing];
    const pad = new DrawingPad(drawing, (input, final) => this.drawn(input, final));
    this.preview = h("canvas", {
      class: "preview",
      width,
      height,
      style: `width: ${width * PREVIEW_SCALE}px; height: ${height * PREVIEW_SCALE}px`,
      "data-testid": "digit-preview",
      "aria-label": "the nets' input",
    });
    this.bars = names.map((net) => new ProbabilityBars(net, netModel(result, net), labels));
    this.note = h("p", { class: "note", "data-testid": "digit-note" });
    const how =
      drawing === "optdigits"
        ? "as the data set's digits were made: the pad as a 32×32 black-and-white bitmap, ink counted in 4×4 blocks"
        : "as MNIST's were: the ink's bounding box scaled into 20×20, centred by its mass in 28×28";
    replaceChildren(
      this.endSlot,
      h("h4", {}, "Confusion matrices (rows: true digit, columns: predicted)"),
      h("div", { class: "confusions", "data-testid": "confusions" }, ...matrices),
      h("h4", {}, "Draw a digit"),
      h(
        "p",
        { class: "note" },
        `Draw large, filling the box. The nets see it ${how} (the small picture); their probabilities follow as you draw.`,
      ),
      h(
        "div",
        { class: "draw-row" },
        pad.element,
        h("figure", { class: "preview-box" }, this.preview, h("figcaption", {}, `${width}×${height} input`)),
        ...this.bars.map((bars) => bars.element),
      ),
      this.note,
    );
    this.drawn(pad.input(), true);
  }

  private drawn(input: number[][], final: boolean): void {
    this.input = input;
    this.seq += 1;
    this.showPreview(input, this.seq);
    if (final) this.predictSoon.now();
    else this.predictSoon.request();
  }

  private showPreview(input: number[][], seq: number): void {
    const canvas = this.preview;
    const context = canvas?.getContext("2d");
    if (!canvas || !context) return;
    const height = input.length;
    const width = input[0]?.length ?? 0;
    const rgba = new Uint8ClampedArray(width * height * 4);
    input.flat().forEach((value, i) => {
      const grey = Math.round(255 * (1 - value));
      rgba.set([grey, grey, grey, 255], i * 4);
    });
    context.putImageData(new ImageData(rgba, width, height), 0, 0);
    canvas.dataset.values = JSON.stringify(input);
    canvas.dataset.seq = String(seq);
  }

  /** Ask every net about the newest input; answers for an older input than one already shown are dropped. */
  private predict(): void {
    const seq = this.seq;
    const pixels = this.input;
    for (const bars of this.bars) {
      if (!bars.model) {
        if (this.note) this.note.textContent = `${netTitle(bars.net)}: the run saved no model to ask`;
        continue;
      }
      this.api
        .post<Prediction[]>(`/api/models/${encodeURIComponent(bars.model)}/predict`, { pixels, k: 10 })
        .then((predictions) => {
          bars.show(predictions, seq);
          if (this.note) this.note.textContent = "";
        })
        .catch((error: unknown) => {
          if (this.note)
            this.note.textContent =
              error instanceof ApiError
                ? `${netTitle(bars.net)}: ${error.field ? `${error.field}: ` : ""}${error.reason}`
                : `${netTitle(bars.net)}: ${String(error)}`;
        });
    }
  }
}
