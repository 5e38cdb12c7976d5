// The linear explanation (deck 004), live: a slider for ε moves every input of the deck's logistic
// regression by ε along sign(w), and the score wᵀx', p(class 1) = σ(score) and each dimension's
// contribution wᵢ·xᵢ before and after are recomputed here, in the page, from the result's x and w.

import type { JobResult } from "./api";
import { h, replaceChildren } from "./dom";

export const LINEAR_METHOD = "linear_explanation";

const SLIDER_MAX = 2;
const SLIDER_STEP = 0.01;
const BEFORE = "rgb(128, 128, 128)";
const AFTER = "rgb(214, 39, 40)";
const SLOT = 40;
const BAR = 14;
const HEIGHT = 240;
const MARGIN = 10;

/** The demo's numbers at one ε, as the deck writes them: a score, p(class 1) and the moved input. */
export interface LinearState {
  epsilon: number;
  moved: number[];
  score: number;
  probability: number;
}

export function linearState(x: number[], w: number[], epsilon: number): LinearState {
  const moved = x.map((value, i) => value + epsilon * Math.sign(w[i]));
  const score = moved.reduce((sum, value, i) => sum + w[i] * value, 0);
  return { epsilon, moved, score, probability: 1 / (1 + Math.exp(-score)) };
}

/** Up to two decimals without trailing zeros: -3, 2, -2.9. */
function short(value: number): string {
  const text = String(Number(value.toFixed(2)));
  return text === "-0" ? "0" : text;
}

function isNumbers(value: unknown): value is number[] {
  return Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === "number");
}

/** Whether `result` holds the demo's x and w (what `linear_explanation` returns). */
export function isLinearResult(result: JobResult | null | undefined): result is JobResult {
  const data = result?.data;
  return Boolean(data && isNumbers(data.x) && isNumbers(data.w) && data.x.length === data.w.length);
}

export class LinearDemo {
  readonly element: HTMLElement;
  private readonly x: number[];
  private readonly w: number[];
  private readonly slider: HTMLInputElement;
  private readonly epsilonEl: HTMLOutputElement;
  private readonly scoreEl: HTMLElement;
  private readonly probabilityEl: HTMLElement;
  private readonly riseEl: HTMLElement;
  private readonly canvas: HTMLCanvasElement;
  private readonly rows: HTMLElement;
  private readonly scale: number;

  constructor(result: JobResult) {
    this.x = result.data.x as number[];
    this.w = result.data.w as number[];
    const initial = typeof result.data.epsilon === "number" ? result.data.epsilon : 0;
    // One scale for every ε of the slider, so the grey bars (before) stay put while the red ones move.
    const widest = linearState(this.x, this.w, SLIDER_MAX).moved.map((value, i) => this.w[i] * value);
    this.scale = Math.max(...this.x.map((value, i) => Math.abs(this.w[i] * value)), ...widest.map(Math.abs));
    this.slider = h("input", {
      type: "range",
      min: 0,
      max: SLIDER_MAX,
      step: SLIDER_STEP,
      value: initial,
      id: "linear-epsilon",
      "data-testid": "linear-epsilon",
      "aria-label": "epsilon",
    });
    this.slider.addEventListener("input", () => this.draw());
    this.epsilonEl = h("output", { for: "linear-epsilon", "data-testid": "linear-epsilon-value" });
    this.scoreEl = h("strong", { "data-testid": "linear-score" });
    this.probabilityEl = h("strong", { "data-testid": "linear-probability" });
    this.riseEl = h("span", { class: "muted" });
    this.canvas = h("canvas", {
      "data-testid": "linear-bars",
      width: SLOT * this.x.length,
      height: HEIGHT,
      "aria-label": "contributions w·x before (grey) and after (red)",
    });
    this.rows = h("tbody", {});
    this.element = h(
      "div",
      { class: "linear-demo" },
      h(
        "figure",
        {},
        this.canvas,
        h("figcaption", {}, "wᵢ·xᵢ per dimension: grey before the move, red after it"),
      ),
      h(
        "div",
        { class: "readouts" },
        h("label", { class: "opacity", for: "linear-epsilon" }, "ε ", this.epsilonEl),
        this.slider,
        h("p", { class: "facts" }, "score wᵀx′ = ", this.scoreEl, " ", this.riseEl),
        h("p", { class: "facts" }, "p(class 1) = σ(score) = ", this.probabilityEl),
        h(
          "table",
          { class: "numbers" },
          h(
            "thead",
            {},
            h("tr", {}, ...["i", "xᵢ", "wᵢ", "x′ᵢ", "wᵢ·xᵢ", "wᵢ·x′ᵢ"].map((name) => h("th", {}, name))),
          ),
          this.rows,
        ),
      ),
    );
    this.draw();
  }

  get epsilon(): number {
    return Number(this.slider.value);
  }

  private draw(): void {
    const state = linearState(this.x, this.w, this.epsilon);
    const before = this.x.map((value, i) => this.w[i] * value);
    const after = state.moved.map((value, i) => this.w[i] * value);
    const l1 = this.w.reduce((sum, value) => sum + Math.abs(value), 0);
    this.epsilonEl.textContent = short(state.epsilon);
    this.scoreEl.textContent = short(state.score);
    this.probabilityEl.textContent = state.probability.toFixed(4);
    const base = short(before.reduce((a, b) => a + b, 0));
    this.riseEl.textContent = `= ${base} + ε‖w‖₁ = ${base} + ${short(state.epsilon * l1)}`;
    replaceChildren(
      this.rows,
      ...this.x.map((value, i) =>
        h(
          "tr",
          { "data-testid": "linear-row" },
          ...[i, value, this.w[i], state.moved[i], before[i], after[i]].map((cell) =>
            h("td", {}, short(cell)),
          ),
        ),
      ),
    );
    this.paint(before, after);
    this.element.dataset.epsilon = String(state.epsilon);
  }

  /** Dimension i is slot i: its grey bar (before) left of its red one (after), up for positive values. */
  private paint(before: number[], after: number[]): void {
    const context = this.canvas.getContext("2d");
    if (!context) return;
    const zero = HEIGHT / 2;
    const reach = zero - MARGIN;
    context.fillStyle = "#fff";
    context.fillRect(0, 0, this.canvas.width, HEIGHT);
    before.forEach((first, i) => {
      for (const [value, left, colour] of [
        [first, i * SLOT + (SLOT / 2 - BAR), BEFORE],
        [after[i], i * SLOT + SLOT / 2, AFTER],
      ] as [number, number, string][]) {
        const length = Math.round((Math.abs(value) / this.scale) * reach);
        context.fillStyle = colour;
        context.fillRect(left, value > 0 ? zero - length : zero + 1, BAR, length);
      }
    });
    context.fillStyle = "#000";
    context.fillRect(0, zero, this.canvas.width, 1);
  }
}
