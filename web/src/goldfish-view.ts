// "Mix in a tiny bit of goldfish weights" (deck 004): the linear digit classifier's ten weight templates,
// each under its digit, the true class's and the target's marked, and the direction the digit was nudged
// in, sign(w_target − w_true), drawn from the result's weights.npy in the server's colours (red positive,
// blue negative, white 0, one scale for all ten).

import type { ApiClient, JobResult } from "./api";
import { h, replaceChildren } from "./dom";
import { parseNpy } from "./npy";

export const GOLDFISH_METHOD = "goldfish_weights";

const SIDE = 8;

/** RGBA of one template's values scaled by `scale`: as the server's templates picture colours them. */
export function templateColours(values: ArrayLike<number>, scale: number): Uint8ClampedArray<ArrayBuffer> {
  const rgba = new Uint8ClampedArray(values.length * 4);
  for (let i = 0; i < values.length; i++) {
    const v = scale > 0 ? values[i] / scale : 0;
    rgba.set(
      [
        (1 - Math.max(-v, 0)) * 255 + 0.5,
        (1 - Math.abs(v)) * 255 + 0.5,
        (1 - Math.max(v, 0)) * 255 + 0.5,
        255,
      ],
      i * 4,
    );
  }
  return rgba;
}

function tile(values: ArrayLike<number>, scale: number, caption: string, role?: string): HTMLElement {
  const canvas = h("canvas", { width: SIDE, height: SIDE, "data-testid": "template" });
  canvas.getContext("2d")?.putImageData(new ImageData(templateColours(values, scale), SIDE, SIDE), 0, 0);
  const named = role === "true" || role === "target" ? `${caption} (${role})` : caption;
  return h("figure", { "data-role": role }, canvas, h("figcaption", {}, named));
}

export function isGoldfishResult(result: JobResult | null | undefined): result is JobResult {
  return Boolean(result?.array_urls?.weights && typeof result.data?.label === "number");
}

export class GoldfishView {
  readonly element: HTMLElement;
  private readonly templates: HTMLElement;
  private readonly facts: HTMLElement;

  constructor(
    private readonly api: ApiClient,
    private readonly result: JobResult,
  ) {
    this.templates = h("div", { class: "templates", "data-testid": "templates" });
    this.facts = h("p", { class: "facts", "data-testid": "goldfish-facts" });
    this.element = h("div", {}, this.facts, this.templates);
  }

  async load(): Promise<void> {
    const data = this.result.data;
    const label = Number(data.label);
    const target = Number(data.target);
    const percent = (value: unknown) => `${(Number(value) * 100).toFixed(1)}%`;
    this.facts.textContent =
      `digit ${label} + ε·sign(w${target} − w${label}), ε = ${Number(data.epsilon)}: ` +
      `p(${label}) ${percent(data.p_true)} → ${percent(data.p_true_nudged)}, ` +
      `p(${target}) ${percent(data.p_target)} → ${percent(data.p_target_nudged)}; ` +
      `classified as ${String(data.prediction_nudged)}`;
    try {
      const url = this.result.array_urls?.weights ?? "";
      const weights = parseNpy(await this.api.bytes(url, "weights"));
      const [classes, size] = weights.shape;
      if (weights.shape.length !== 2 || size !== SIDE * SIDE)
        throw new Error(`weights.npy: shape (${weights.shape.join(", ")}), expected classes x 64`);
      const row = (index: number) => weights.data.subarray(index * size, (index + 1) * size);
      let scale = 0;
      for (const value of weights.data) scale = Math.max(scale, Math.abs(value));
      const difference = row(target).map((value, i) => Math.sign(value - row(label)[i]));
      replaceChildren(
        this.templates,
        ...Array.from({ length: classes }, (_, index) =>
          tile(
            row(index),
            scale,
            String(index),
            index === label ? "true" : index === target ? "target" : undefined,
          ),
        ),
        tile(difference, 1, `sign(w${target} − w${label})`, "direction"),
      );
    } catch (error) {
      this.templates.textContent = `The templates could not be drawn: ${error instanceof Error ? error.message : String(error)}`;
    }
  }
}
