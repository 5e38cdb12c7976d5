// Context on the real model (deck 002, the cow on a beach): once the run is done, one row per background with
// the original class's probability and rank there and the top class, each probability drawn as a bar, and the
// share of the occlusion effect that lies in the background.

import type { JobResult } from "./api";
import { h } from "./dom";
import css from "./styles/context.css?inline";

export const CONTEXT_METHOD = "context";

interface Top {
  class: number;
  label: string;
  probability: number;
}

interface BackgroundRow {
  background: string;
  probability: number;
  rank: number;
  top1_label: string;
}

const percent = (value: number) => `${(value * 100).toFixed(1)}%`;

function isRow(value: unknown): value is BackgroundRow {
  const row = value as BackgroundRow;
  return Boolean(row) && typeof row.background === "string" && typeof row.probability === "number";
}

/** Whether `result` is what `context` returns: its original class and a row per background. */
export function isContextResult(result: JobResult | null | undefined): result is JobResult {
  const data = result?.data;
  return Boolean(data && Array.isArray(data.backgrounds) && data.backgrounds.every(isRow) && data.original);
}

function row(name: string, probability: number, rank: number, top: string, original: number): HTMLElement {
  const bar = h("span", { class: "context-bar", style: `width: ${(probability * 100).toFixed(1)}%` });
  const change = probability - original;
  return h(
    "tr",
    { "data-testid": "context-row", "data-background": name },
    h("th", { scope: "row" }, name),
    h(
      "td",
      { class: "context-probability" },
      h("span", { class: "context-track" }, bar),
      percent(probability),
    ),
    h("td", {}, name === "original" ? "" : `${change >= 0 ? "+" : "−"}${percent(Math.abs(change))}`),
    h("td", {}, String(rank)),
    h("td", {}, top),
  );
}

export class ContextView {
  readonly element: HTMLElement;

  constructor(result: JobResult) {
    const data = result.data;
    const original = data.original as { probability: number; rank: number; top5: Top[] };
    const rows = data.backgrounds as BackgroundRow[];
    const label = String(data.label);
    const fraction = Number(data.background_fraction);
    const facts = h(
      "p",
      { "data-testid": "context-facts" },
      `${label}: ${percent(original.probability)} on its own background. Hiding the background alone ` +
        `carries ${percent(fraction)} of the occlusion effect.`,
    );
    const table = h(
      "table",
      { class: "context-table", "data-testid": "context-table" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["background", `p(${label})`, "change", "rank", "top class"].map((name) => h("th", {}, name)),
        ),
      ),
      h(
        "tbody",
        {},
        row(
          "original",
          original.probability,
          original.rank,
          original.top5[0]?.label ?? "",
          original.probability,
        ),
        ...rows.map((each) =>
          row(each.background, each.probability, each.rank, each.top1_label, original.probability),
        ),
      ),
    );
    this.element = h("div", { class: "context-view" }, h("style", {}, css), facts, table);
  }
}
