// A square pad to draw a digit on with a mouse, a finger or a pen (pointer events), and the two ways of making
// the drawing a net's input that the digits contract names (`result.data.drawing`):
//
// - "optdigits" (UCI optdigits, scikit-learn's digits): as NIST's preprocessing normalised a character, the
//   ink's bounding box scaled so its longer side is 32 (aspect ratio kept), centred in a 32×32 binary bitmap,
//   then the ink counted in non-overlapping 4×4 blocks: 8×8 values 0..16, divided by 16.
// - "mnist": the ink's bounding box scaled to fit 20×20 keeping its aspect ratio (grey, area-averaged), placed
//   in 28×28 with its centre of mass at the centre.
//
// Ink is the canvas's alpha: the pad strokes an opaque colour on a transparent canvas, so the edges' anti-aliasing
// is partial ink, whatever the page's theme.

import { h } from "./dom";

export type Drawing = "optdigits" | "mnist";

/** The pad's side in canvas pixels. */
export const PAD_SIDE = 256;
const OPTDIGITS_BITMAP = 32;
const OPTDIGITS_BLOCK = 4;
const MNIST_SIDE = 28;
const MNIST_BOX = 20;
/** Stroke widths as shares of the pad: optdigits' bitmaps have strokes about 3 of 32 pixels wide (4 once a
 * digit drawn 3/4 of the pad tall is scaled to fill the bitmap: thinner strokes leave less ink than the data set's
 * digits have, 30 % of the 8×8 values' range on average), MNIST's about 2.5 of the 20-pixel box a digit fills. */
const STROKE_SHARE: Record<Drawing, number> = { optdigits: 3 / 32, mnist: 1 / 14 };

/** The input size each drawing gives, [height, width]. */
export const DRAWING_SIZE: Record<Drawing, [number, number]> = { optdigits: [8, 8], mnist: [28, 28] };

/** The alpha channel of `side`×`side` RGBA pixels as ink, 0..255 each. */
function inkOf(rgba: Uint8ClampedArray, side: number): Uint8Array {
  const ink = new Uint8Array(side * side);
  for (let i = 0; i < ink.length; i++) ink[i] = rgba[i * 4 + 3];
  return ink;
}

/**
 * optdigits' input from a `side`×`side` ink image, as NIST's preprocessing made optdigits' normalised bitmaps
 * (scikit-learn's `load_digits().DESCR`, citing Garris et al., NISTIR 5469, 1994): a pad pixel is on when its
 * ink is at least half; the on pixels' bounding box is scaled by 32 / its longer side keeping its aspect ratio
 * (area-average: a cell is on when at least half of the box's pixels whose centres fall in it are on; a cell no
 * centre falls in, when the box is under 32 pixels, takes the pixel under its own centre) and centred in a 32×32
 * bitmap (offset
 * ⌊(32 − size) / 2⌋); then each 4×4 block of the bitmap counts its pixels that are on. 8×8 rows of values in
 * [0, 1] (multiples of 1/16); integer arithmetic, so any implementation agrees exactly. An empty pad is zeros.
 */
export function optdigitsInput(ink: ArrayLike<number>, side: number): number[][] {
  const on = (y: number, x: number) => 2 * ink[y * side + x] >= 255;
  let top = side;
  let left = side;
  let bottom = -1;
  let right = -1;
  for (let y = 0; y < side; y++)
    for (let x = 0; x < side; x++)
      if (on(y, x)) {
        top = Math.min(top, y);
        bottom = Math.max(bottom, y);
        left = Math.min(left, x);
        right = Math.max(right, x);
      }
  const bitmap = new Uint8Array(OPTDIGITS_BITMAP * OPTDIGITS_BITMAP);
  if (bottom >= 0) {
    const height = bottom - top + 1;
    const width = right - left + 1;
    const longer = Math.max(height, width);
    // The box's size in bitmap pixels, n · 32 / longer rounded half up, and the cell a box pixel's centre is in.
    const cells = (n: number) => Math.max(1, Math.floor((2 * OPTDIGITS_BITMAP * n + longer) / (2 * longer)));
    const boxH = cells(height);
    const boxW = cells(width);
    const cellOf = (i: number, size: number) =>
      Math.min(size - 1, Math.floor(((2 * i + 1) * OPTDIGITS_BITMAP) / (2 * longer)));
    const onCounts = new Uint32Array(boxH * boxW);
    const counts = new Uint32Array(boxH * boxW);
    for (let y = 0; y < height; y++) {
      const row = cellOf(y, boxH);
      for (let x = 0; x < width; x++) {
        const cell = row * boxW + cellOf(x, boxW);
        counts[cell] += 1;
        if (on(top + y, left + x)) onCounts[cell] += 1;
      }
    }
    const under = (i: number, size: number) =>
      Math.min(size - 1, Math.floor(((2 * i + 1) * longer) / (2 * OPTDIGITS_BITMAP)));
    const rowShift = Math.floor((OPTDIGITS_BITMAP - boxH) / 2);
    const columnShift = Math.floor((OPTDIGITS_BITMAP - boxW) / 2);
    for (let row = 0; row < boxH; row++)
      for (let column = 0; column < boxW; column++) {
        const cell = row * boxW + column;
        const value = counts[cell]
          ? 2 * onCounts[cell] >= counts[cell]
          : on(top + under(row, height), left + under(column, width));
        bitmap[(rowShift + row) * OPTDIGITS_BITMAP + columnShift + column] = value ? 1 : 0;
      }
  }
  const blocks = OPTDIGITS_BITMAP / OPTDIGITS_BLOCK;
  const input: number[][] = [];
  for (let row = 0; row < blocks; row++) {
    const values: number[] = [];
    for (let column = 0; column < blocks; column++) {
      let count = 0;
      for (let y = row * OPTDIGITS_BLOCK; y < (row + 1) * OPTDIGITS_BLOCK; y++)
        for (let x = column * OPTDIGITS_BLOCK; x < (column + 1) * OPTDIGITS_BLOCK; x++)
          count += bitmap[y * OPTDIGITS_BITMAP + x];
      values.push(count / (OPTDIGITS_BLOCK * OPTDIGITS_BLOCK));
    }
    input.push(values);
  }
  return input;
}

/**
 * MNIST's input from a `side`×`side` ink image: the ink's bounding box scaled to fit 20×20 keeping its aspect
 * ratio, each output pixel the mean ink of the pad pixels whose centres fall in it; then placed in 28×28 shifted
 * by whole pixels so that its centre of mass is nearest the centre (14, 14), kept inside. 28×28 in [0, 1].
 */
export function mnistInput(ink: ArrayLike<number>, side: number): number[][] {
  const out = Array.from({ length: MNIST_SIDE }, () => new Array<number>(MNIST_SIDE).fill(0));
  let top = side;
  let left = side;
  let bottom = -1;
  let right = -1;
  for (let y = 0; y < side; y++)
    for (let x = 0; x < side; x++)
      if (ink[y * side + x] > 0) {
        top = Math.min(top, y);
        bottom = Math.max(bottom, y);
        left = Math.min(left, x);
        right = Math.max(right, x);
      }
  if (bottom < 0) return out;
  const height = bottom - top + 1;
  const width = right - left + 1;
  const scale = MNIST_BOX / Math.max(height, width);
  const boxH = Math.max(1, Math.round(height * scale));
  const boxW = Math.max(1, Math.round(width * scale));
  const sums = new Float64Array(boxH * boxW);
  const counts = new Uint32Array(boxH * boxW);
  for (let y = top; y <= bottom; y++) {
    const row = Math.min(boxH - 1, Math.floor((y - top + 0.5) * scale));
    for (let x = left; x <= right; x++) {
      const column = Math.min(boxW - 1, Math.floor((x - left + 0.5) * scale));
      sums[row * boxW + column] += ink[y * side + x] / 255;
      counts[row * boxW + column] += 1;
    }
  }
  const box = Array.from(sums, (sum, i) => (counts[i] ? sum / counts[i] : 0));
  let mass = 0;
  let rowMass = 0;
  let columnMass = 0;
  box.forEach((value, i) => {
    mass += value;
    rowMass += value * (Math.floor(i / boxW) + 0.5);
    columnMass += value * ((i % boxW) + 0.5);
  });
  const clamp = (value: number, high: number) => Math.min(Math.max(value, 0), high);
  const rowShift = clamp(Math.round(MNIST_SIDE / 2 - rowMass / mass), MNIST_SIDE - boxH);
  const columnShift = clamp(Math.round(MNIST_SIDE / 2 - columnMass / mass), MNIST_SIDE - boxW);
  box.forEach((value, i) => {
    out[rowShift + Math.floor(i / boxW)][columnShift + (i % boxW)] = value;
  });
  return out;
}

/** The input `drawing` makes of the pad's RGBA pixels (`side`×`side`). */
export function padInput(drawing: Drawing, rgba: Uint8ClampedArray, side: number): number[][] {
  const ink = inkOf(rgba, side);
  return drawing === "mnist" ? mnistInput(ink, side) : optdigitsInput(ink, side);
}

/** A drawing pad: `changed` gets the pad's input after each stroke segment and after Clear (`final` when a
 * stroke ends or the pad is cleared). */
export class DrawingPad {
  readonly element: HTMLElement;
  readonly canvas: HTMLCanvasElement;
  private readonly context: CanvasRenderingContext2D;
  private last: [number, number] | null = null;
  private pointer: number | null = null;

  constructor(
    private readonly drawing: Drawing,
    private readonly changed: (input: number[][], final: boolean) => void,
  ) {
    this.canvas = h("canvas", {
      class: "pad",
      width: PAD_SIDE,
      height: PAD_SIDE,
      "data-testid": "digit-pad",
      "data-drawing": drawing,
      "aria-label": "draw a digit here",
    });
    const context = this.canvas.getContext("2d", { willReadFrequently: true });
    if (!context) throw new Error("no 2d canvas");
    this.context = context;
    const clear = h("button", { type: "button", "data-testid": "digit-clear" }, "Clear");
    clear.addEventListener("click", () => this.clear());
    this.element = h("div", { class: "pad-box" }, this.canvas, clear);
    this.listen();
  }

  /** The pad's input as the contract's `drawing` makes it. */
  input(): number[][] {
    const pixels = this.context.getImageData(0, 0, PAD_SIDE, PAD_SIDE).data;
    return padInput(this.drawing, pixels, PAD_SIDE);
  }

  clear(): void {
    this.context.clearRect(0, 0, PAD_SIDE, PAD_SIDE);
    this.changed(this.input(), true);
  }

  private at(event: PointerEvent): [number, number] {
    const box = this.canvas.getBoundingClientRect();
    return [
      ((event.clientX - box.left) / box.width) * PAD_SIDE,
      ((event.clientY - box.top) / box.height) * PAD_SIDE,
    ];
  }

  private stroke(to: [number, number]): void {
    const context = this.context;
    const from = this.last ?? to;
    context.strokeStyle = "#000";
    context.lineWidth = STROKE_SHARE[this.drawing] * PAD_SIDE;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(...from);
    context.lineTo(...to);
    context.stroke();
    this.last = to;
  }

  private listen(): void {
    const canvas = this.canvas;
    canvas.addEventListener("pointerdown", (event) => {
      if (this.pointer !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
      event.preventDefault();
      this.pointer = event.pointerId;
      canvas.dataset.pointerType = event.pointerType;
      try {
        canvas.setPointerCapture(event.pointerId);
      } catch {
        // A pointer the browser does not know (an event made by a script) is drawn without capture.
      }
      this.last = null;
      this.stroke(this.at(event));
      this.changed(this.input(), false);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (event.pointerId !== this.pointer) return;
      const events = event.getCoalescedEvents?.() ?? [];
      for (const each of events.length > 0 ? events : [event]) this.stroke(this.at(each));
      this.changed(this.input(), false);
    });
    const end = (event: PointerEvent) => {
      if (event.pointerId !== this.pointer) return;
      this.pointer = null;
      this.last = null;
      this.changed(this.input(), true);
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
  }
}
