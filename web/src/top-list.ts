// A top-k list of classes with their probabilities as bars: the job's input, or each panel of a split frame.

import type { Prediction } from "./api";
import { h, replaceChildren } from "./dom";

/** One class of a `predictions` event's list (`convlens.events.Predictions`), as the server sends it. */
export interface TopClass {
  class: number;
  label: string;
  probability: number;
}

/** A `predictions` event: the top classes of each panel the frames show, by panel name. */
export interface PredictionsEvent {
  job: string;
  step: number | null;
  tops: Record<string, TopClass[]>;
}

export const SHOWN = 5;

/** `list` filled with the first five of `predictions`, best first, "—" when there are none. */
export function showTopClasses(
  list: HTMLOListElement,
  predictions: Prediction[],
  testid = "prediction",
): void {
  if (predictions.length === 0) {
    replaceChildren(list, h("li", { class: "muted" }, "—"));
    return;
  }
  replaceChildren(
    list,
    ...predictions.slice(0, SHOWN).map((p) => {
      const percent = (Math.max(0, Math.min(1, p.probability)) * 100).toFixed(1);
      return h(
        "li",
        { "data-testid": testid, "data-index": p.index },
        h("span", { class: "label", title: `${p.index}: ${p.label}` }, p.label),
        h("span", { class: "probability" }, `${percent}%`),
        h("span", { class: "meter" }, h("span", { style: `width:${percent}%` })),
      );
    }),
  );
}

/** A `predictions` event's classes in the shape of the job's own top-5. */
export function asPredictions(top: TopClass[]): Prediction[] {
  return top.map((entry) => ({ index: entry.class, label: entry.label, probability: entry.probability }));
}
