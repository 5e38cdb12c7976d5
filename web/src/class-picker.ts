// A class of the model: a search over all its labels, and a quick pick of the image's top-5 classes.

import type { Prediction } from "./api";
import { h, replaceChildren } from "./dom";

export const TOP_PREDICTION = "top prediction";

/** The text cannot be read as a class. */
export class ClassChoiceError extends Error {}

export interface ClassPickerOptions {
  id: string;
  name: string;
  testid: string;
  labels: string[];
  /** Empty means "the top prediction" (sent as null). */
  nullable: boolean;
  initial?: number | null;
}

export class ClassPicker {
  readonly element: HTMLElement;
  readonly input: HTMLInputElement;
  private readonly topRow: HTMLElement;
  private readonly chips: HTMLElement;
  private readonly labels: string[];
  private readonly nullable: boolean;

  constructor(options: ClassPickerOptions) {
    const { id, name, testid, labels, nullable, initial } = options;
    this.labels = labels;
    this.nullable = nullable;
    const listId = `${id}-labels`;
    const datalist = h(
      "datalist",
      { id: listId },
      nullable && h("option", { value: TOP_PREDICTION }),
      ...labels.map((label, index) => h("option", { value: `${index}: ${label}` })),
    );
    this.input = h("input", {
      id,
      type: "search",
      name,
      list: listId,
      "data-testid": testid,
      autocomplete: "off",
      placeholder: nullable ? TOP_PREDICTION : "class name or index",
      value: typeof initial === "number" ? this.text(initial) : null,
    });
    this.input.addEventListener("input", () => this.markChosen());
    this.chips = h("span", { class: "chips" });
    this.topRow = h(
      "div",
      { class: "top-classes", "data-testid": "top-classes", hidden: true },
      h("span", { class: "top-label" }, "top-5:"),
      this.chips,
    );
    this.element = h("span", { class: "class-input" }, this.input, datalist, this.topRow);
  }

  /** The class index, null for "the top prediction", or a ClassChoiceError. */
  read(): number | null {
    const text = this.input.value.trim();
    if (text === "" || text.toLowerCase() === TOP_PREDICTION) {
      if (this.nullable) return null;
      throw new ClassChoiceError("choose a class");
    }
    const numbered = /^(\d+)\b/.exec(text);
    if (numbered) return Number(numbered[1]);
    const wanted = text.toLowerCase();
    const index = this.labels.findIndex((label) => label.toLowerCase() === wanted);
    if (index >= 0) return index;
    const partial = this.labels.findIndex((label) => label.toLowerCase().split(/,\s*/).includes(wanted));
    if (partial >= 0) return partial;
    throw new ClassChoiceError(`no class named ${JSON.stringify(text)}`);
  }

  set(index: number | null): void {
    this.input.value = index === null ? "" : this.text(index);
    this.input.dispatchEvent(new Event("input", { bubbles: true }));
    this.input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  /** Offer `predictions` as one-click choices; a string says why there are none (or is a loading note). */
  setTopClasses(predictions: Prediction[] | string): void {
    this.topRow.hidden = false;
    if (typeof predictions === "string") {
      this.topRow.dataset.state = predictions ? "note" : "empty";
      replaceChildren(this.chips, h("span", { class: "muted" }, predictions));
      return;
    }
    this.topRow.dataset.state = "ready";
    replaceChildren(
      this.chips,
      ...predictions.map((prediction) => {
        const percent = `${(prediction.probability * 100).toFixed(1)}%`;
        const chip = h(
          "button",
          {
            type: "button",
            class: "chip",
            "data-testid": "top-class",
            "data-index": prediction.index,
            "aria-pressed": "false",
            title: `${prediction.index}: ${prediction.label} (${percent})`,
          },
          prediction.label,
          h("small", {}, percent),
        );
        chip.addEventListener("click", () => this.set(prediction.index));
        return chip;
      }),
    );
    this.markChosen();
  }

  private text(index: number): string {
    const label = this.labels[index];
    return label === undefined ? String(index) : `${index}: ${label}`;
  }

  private markChosen(): void {
    let chosen: number | null;
    try {
      chosen = this.read();
    } catch {
      chosen = null;
    }
    for (const chip of this.chips.querySelectorAll<HTMLElement>("[data-index]")) {
      chip.setAttribute("aria-pressed", String(chosen !== null && Number(chip.dataset.index) === chosen));
    }
  }
}
