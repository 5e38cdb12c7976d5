// A confusion matrix on a canvas: rows the true classes, columns the predicted ones, each cell's count written
// in it and the cell shaded by its share of its row (white 0, the accent blue 1), so a class's mistakes stand
// out however many test digits it has. The counts are also a table inside the canvas, for screen readers.

import { h } from "./dom";

/** The shade at a row share of 1; 0 is white. */
export const CONFUSION_COLOUR: [number, number, number] = [31, 119, 180];
const CELL = 30;
/** Room for the class labels and the axis titles, left of and above the cells. */
const MARGIN = 44;

/** The RGB a cell of row share `share` is filled with (rounded as the canvas stores it). */
export function cellColour(share: number): [number, number, number] {
  return CONFUSION_COLOUR.map((full) => Math.round(255 + share * (full - 255))) as [number, number, number];
}

/** A canvas of `counts` (rows true, columns predicted) labelled with `labels`. */
export function confusionMatrix(counts: number[][], labels: string[], caption: string): HTMLElement {
  const n = counts.length;
  const side = MARGIN + n * CELL + 2;
  const table = h(
    "table",
    { "data-testid": "confusion-table" },
    h("caption", {}, caption),
    h("tr", {}, h("th", {}, "true \\ predicted"), ...labels.map((label) => h("th", {}, label))),
    ...counts.map((row, i) =>
      h("tr", {}, h("th", {}, labels[i] ?? String(i)), ...row.map((count) => h("td", {}, String(count)))),
    ),
  );
  const canvas = h(
    "canvas",
    {
      class: "confusion",
      width: side,
      height: side,
      "data-testid": "confusion",
      "data-left": MARGIN,
      "data-top": MARGIN,
      "data-cell": CELL,
    },
    table,
  );
  const context = canvas.getContext("2d");
  if (context) {
    context.fillStyle = "#fff";
    context.fillRect(0, 0, side, side);
    context.textAlign = "center";
    context.textBaseline = "middle";
    context.font = "12px system-ui, sans-serif";
    counts.forEach((row, i) => {
      const total = row.reduce((sum, count) => sum + count, 0);
      row.forEach((count, j) => {
        const share = total > 0 ? count / total : 0;
        const [r, g, b] = cellColour(share);
        const x = MARGIN + j * CELL;
        const y = MARGIN + i * CELL;
        context.fillStyle = `rgb(${r}, ${g}, ${b})`;
        context.fillRect(x, y, CELL, CELL);
        context.fillStyle = share > 0.5 ? "#fff" : "#222";
        if (count > 0) context.fillText(String(count), x + CELL / 2, y + CELL / 2);
      });
    });
    context.fillStyle = "#222";
    labels.forEach((label, k) => {
      context.fillText(label, MARGIN + k * CELL + CELL / 2, MARGIN - 9);
      context.fillText(label, MARGIN - 10, MARGIN + k * CELL + CELL / 2);
    });
    context.strokeStyle = "#bbb";
    context.strokeRect(MARGIN - 0.5, MARGIN - 0.5, n * CELL + 1, n * CELL + 1);
    context.font = "11px system-ui, sans-serif";
    context.fillText("predicted", MARGIN + (n * CELL) / 2, 10);
    context.save();
    context.translate(10, MARGIN + (n * CELL) / 2);
    context.rotate(-Math.PI / 2);
    context.fillText("true", 0, 0);
    context.restore();
  }
  return h("figure", { class: "confusion-box" }, canvas, h("figcaption", {}, caption));
}
