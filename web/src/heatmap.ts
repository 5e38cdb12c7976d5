// Heatmaps drawn in the browser: the server's colour tables, maps normalised one shared way, and
// a map blended over the picture it was computed on at any opacity, without asking the server again.

import type { ApiClient } from "./api";

/** A colour table: 256 RGB triples, value 0 first. */
export type ColourTable = Uint8Array;

/** The percentile each map is divided by in the comparison view: the brightest 1 % saturate. */
export const COMPARE_PERCENTILE = 99;

const tables = new Map<string, Promise<ColourTable>>();

/** The server's colour map `name` (fetched once per server). */
export function colourTable(api: ApiClient, name = "inferno"): Promise<ColourTable> {
  const key = `${api.server} ${name}`;
  let table = tables.get(key);
  if (!table) {
    table = api.colormap(name).then(({ colors }) => {
      if (colors.length !== 256)
        throw new Error(`colour map ${name}: ${colors.length} colours, expected 256`);
      return Uint8Array.from(colors.flat());
    });
    table.catch(() => tables.delete(key));
    tables.set(key, table);
  }
  return table;
}

/** The `q`-th percentile of `values`, interpolated linearly between ranks as numpy.percentile does. */
export function percentile(values: ArrayLike<number>, q: number): number {
  const sorted = Float64Array.from(values).sort();
  if (sorted.length === 0) return Number.NaN;
  const rank = (q / 100) * (sorted.length - 1);
  const below = Math.floor(rank);
  const above = Math.min(below + 1, sorted.length - 1);
  const low = sorted[below] ?? Number.NaN;
  const high = sorted[above] ?? Number.NaN;
  return low + (high - low) * (rank - below);
}

export interface Normalised {
  /** Values in [0, 1]. */
  values: Float32Array;
  /** What 1 stands for, in the map's own units; 0 when the map has no positive value. */
  scale: number;
}

/**
 * The comparison view's normalisation: the positive part of `values` divided by its own
 * `COMPARE_PERCENTILE`-th percentile (its maximum when that is 0, as in a map positive on under 1 %
 * of pixels) and clipped to [0, 1]. Negative values (counter-evidence) become 0.
 */
export function normalisePositive(values: ArrayLike<number>): Normalised {
  const positive = Float32Array.from(values, (v) => (v > 0 ? v : 0));
  let scale = percentile(positive, COMPARE_PERCENTILE);
  if (!(scale > 0)) scale = positive.reduce((a, b) => Math.max(a, b), 0);
  const normalised = new Float32Array(positive.length);
  if (scale > 0)
    for (let i = 0; i < positive.length; i++) normalised[i] = Math.min((positive[i] ?? 0) / scale, 1);
  return { values: normalised, scale };
}

/** Values in [0, 1] → RGBA pixels of `table` (row `floor(v * 255 + 0.5)`, as the server rounds). */
export function colourise(values: ArrayLike<number>, table: ColourTable): Uint8ClampedArray<ArrayBuffer> {
  const pixels = new Uint8ClampedArray(values.length * 4);
  for (let i = 0; i < values.length; i++) {
    const value = values[i] ?? 0;
    const row = Math.floor(Math.min(Math.max(Number.isNaN(value) ? 0 : value, 0), 1) * 255 + 0.5) * 3;
    pixels[4 * i] = table[row] ?? 0;
    pixels[4 * i + 1] = table[row + 1] ?? 0;
    pixels[4 * i + 2] = table[row + 2] ?? 0;
    pixels[4 * i + 3] = 255;
  }
  return pixels;
}

/** A grey map (a PNG's red channel, 0-255) → RGBA pixels of `table`. */
export function colouriseGrey(grey: ImageData, table: ColourTable): Uint8ClampedArray<ArrayBuffer> {
  const source = grey.data;
  const pixels = new Uint8ClampedArray(source.length);
  for (let i = 0; i < source.length; i += 4) {
    const row = (source[i] ?? 0) * 3;
    pixels[i] = table[row] ?? 0;
    pixels[i + 1] = table[row + 1] ?? 0;
    pixels[i + 2] = table[row + 2] ?? 0;
    pixels[i + 3] = 255;
  }
  return pixels;
}

/** `(1 - opacity) * picture + opacity * colours`, both RGBA of one size. */
export function blend(
  picture: Uint8ClampedArray,
  colours: Uint8ClampedArray,
  opacity: number,
  width: number,
  height: number,
): ImageData {
  const alpha = Math.min(Math.max(opacity, 0), 1);
  const out = new ImageData(width, height);
  const pixels = out.data;
  for (let i = 0; i < pixels.length; i += 4) {
    pixels[i] = (1 - alpha) * (picture[i] ?? 0) + alpha * (colours[i] ?? 0);
    pixels[i + 1] = (1 - alpha) * (picture[i + 1] ?? 0) + alpha * (colours[i + 1] ?? 0);
    pixels[i + 2] = (1 - alpha) * (picture[i + 2] ?? 0) + alpha * (colours[i + 2] ?? 0);
    pixels[i + 3] = 255;
  }
  return out;
}

/**
 * The exact pixels of an image URL (a PNG from the server), at `width`×`height` when given.
 * No colour-space conversion, so a grey map's values and a picture's pixels arrive as the server wrote them.
 */
export async function loadPixels(url: string, width?: number, height?: number): Promise<ImageData> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
  const bitmap = await createImageBitmap(await response.blob(), {
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  const w = width ?? bitmap.width;
  const h = height ?? bitmap.height;
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  if (!context) throw new Error("no 2D canvas context");
  context.drawImage(bitmap, 0, 0, w, h);
  bitmap.close();
  return context.getImageData(0, 0, w, h);
}

/** Draw `image` on `canvas`, sizing the canvas to it. */
export function paint(canvas: HTMLCanvasElement, image: ImageData): void {
  if (canvas.width !== image.width || canvas.height !== image.height) {
    canvas.width = image.width;
    canvas.height = image.height;
  }
  canvas.getContext("2d")?.putImageData(image, 0, 0);
}
