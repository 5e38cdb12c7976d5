// A finished attribution map in the job view: the method's own map coloured with the server's
// inferno table, laid over the picture the model saw at an opacity the slider sets (re-blended here,
// live, without running the method again), and its colour scale in the method's units.

import { type ApiClient, type JobResult, serverUrl } from "./api";
import { ColourLegend } from "./colour-legend";
import { formatNumber, h } from "./dom";
import {
  blend,
  colourise,
  colouriseGrey,
  colourTable,
  loadPixels,
  normalisePositive,
  paint,
} from "./heatmap";
import { parseNpy } from "./npy";

const DEFAULT_OPACITY = 0.7;

/** Whether `result` is an attribution map this view can draw (the ATTRIBUTION_MAP tag's promise). */
export function isAttributionResult(result: JobResult | null | undefined): result is JobResult {
  return Boolean(result?.array_urls?.attribution && result.model?.id && result.image);
}

export class AttributionOverlay {
  readonly element: HTMLElement;
  private readonly canvas: HTMLCanvasElement;
  private readonly slider: HTMLInputElement;
  private readonly readout: HTMLOutputElement;
  private readonly legend = new ColourLegend();
  private readonly message: HTMLElement;
  private picture: ImageData | null = null;
  private colours: Uint8ClampedArray | null = null;

  constructor(
    private readonly api: ApiClient,
    private readonly result: JobResult,
  ) {
    const initial = typeof result.params?.overlay === "number" ? result.params.overlay : DEFAULT_OPACITY;
    this.canvas = h("canvas", { "data-testid": "overlay-canvas", width: 224, height: 224 });
    this.slider = h("input", {
      type: "range",
      min: 0,
      max: 1,
      step: 0.01,
      value: initial,
      id: "overlay-opacity",
      "data-testid": "opacity",
      "aria-label": "overlay opacity",
    });
    this.readout = h("output", { for: "overlay-opacity" }, `${Math.round(initial * 100)}%`);
    this.slider.addEventListener("input", () => this.draw());
    this.message = h("p", { class: "error", role: "alert", hidden: true });
    this.element = h(
      "div",
      { class: "attribution-view" },
      h("figure", {}, this.canvas, h("figcaption", {}, "map over the input")),
      h(
        "div",
        { class: "attribution-side" },
        h("label", { class: "opacity", for: "overlay-opacity" }, "Overlay opacity ", this.readout),
        this.slider,
        this.legend.element,
        this.message,
      ),
    );
  }

  /** Fetch the picture, the map and the colour table, then draw. */
  async load(): Promise<void> {
    const { result, api } = this;
    try {
      const table = await colourTable(api, "inferno");
      const mapUrl = result.images?.map;
      let scale: number;
      let width: number;
      let height: number;
      if (mapUrl) {
        // The method's own normalised map: colours as the server's PNGs, the scale in data.scale.
        const grey = await loadPixels(serverUrl(api.server, mapUrl));
        ({ width, height } = grey);
        this.colours = colouriseGrey(grey, table);
        scale = Number(result.data?.scale);
      } else {
        const url = result.array_urls?.attribution ?? "";
        const array = parseNpy(await api.bytes(url, "attribution"));
        if (array.shape.length !== 2)
          throw new Error(`attribution.npy: shape (${array.shape.join(", ")}), expected HxW`);
        [height, width] = array.shape as [number, number];
        const normalised = normalisePositive(array.data);
        this.colours = colourise(normalised.values, table);
        scale = normalised.scale;
      }
      this.picture = await loadPixels(api.imageForModel(result.image, result.model.id), width, height);
      this.legend.show(table, {
        low: "0",
        high: Number.isFinite(scale) ? formatNumber(scale) : "max",
        caption: caption(result, scale),
      });
      this.draw();
    } catch (error) {
      this.message.textContent = `The map could not be drawn: ${error instanceof Error ? error.message : String(error)}`;
      this.message.hidden = false;
    }
  }

  private draw(): void {
    const opacity = Number(this.slider.value);
    this.readout.textContent = `${Math.round(opacity * 100)}%`;
    const { picture, colours } = this;
    if (!picture || !colours) return;
    paint(this.canvas, blend(picture.data, colours, opacity, picture.width, picture.height));
    this.canvas.dataset.opacity = String(opacity);
  }
}

function caption(result: JobResult, scale: number): string {
  const target = result.data?.target;
  const label = result.data?.label;
  const what =
    typeof target === "number"
      ? `class ${target}${typeof label === "string" ? ` “${label}”` : ""}`
      : "the class";
  const top = Number.isFinite(scale) ? formatNumber(scale) : "the largest value";
  return (
    `${result.method}: relevance of each input pixel for ${what}, in the method's own units` +
    ` (see its description); 0 is black, ${top} and above is the brightest colour.`
  );
}
