// A colour scale: the bar of a colour table (drawn from the server's own table), the values at its
// two ends, and a caption saying what the values are.

import { h } from "./dom";
import type { ColourTable } from "./heatmap";

export interface LegendLabels {
  low: string;
  high: string;
  caption: string;
}

export class ColourLegend {
  readonly element: HTMLElement;
  private readonly bar: HTMLCanvasElement;
  private readonly low: HTMLElement;
  private readonly high: HTMLElement;
  private readonly caption: HTMLElement;

  constructor() {
    this.bar = h("canvas", { class: "legend-bar", "data-testid": "legend-bar", width: 256, height: 1 });
    this.low = h("span", { "data-testid": "legend-low" });
    this.high = h("span", { "data-testid": "legend-high" });
    this.caption = h("p", { class: "legend-caption", "data-testid": "legend-caption" });
    this.element = h(
      "figure",
      { class: "legend", "data-testid": "legend", role: "img", "aria-label": "colour scale" },
      this.bar,
      h("div", { class: "legend-ends" }, this.low, this.high),
      this.caption,
    );
  }

  /** Draw `table` from left (value 0) to right (value 1) and label the ends. */
  show(table: ColourTable, labels: LegendLabels): void {
    const context = this.bar.getContext("2d");
    if (context) {
      const image = context.createImageData(256, 1);
      for (let i = 0; i < 256; i++) {
        image.data.set([table[3 * i] ?? 0, table[3 * i + 1] ?? 0, table[3 * i + 2] ?? 0, 255], 4 * i);
      }
      context.putImageData(image, 0, 0);
    }
    this.bar.dataset.drawn = "true";
    this.low.textContent = labels.low;
    this.high.textContent = labels.high;
    this.caption.textContent = labels.caption;
    this.element.setAttribute(
      "aria-label",
      `colour scale from ${labels.low} to ${labels.high}: ${labels.caption}`,
    );
  }
}
