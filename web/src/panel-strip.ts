// A frame of several pictures side by side, drawn as that many captioned panels.
//
// A frame whose label contains " | " (e.g. "original | perturbation | adversarial") is one image of equal,
// integer-width panels, left to right in the label's order. Each panel gets its own canvas, its caption (the
// panel's name, and a note such as the perturbation's amplification) and under it the top-5 of the newest
// `predictions` event's list of that name.

import { h } from "./dom";
import type { FrameEvent, FrameSurface } from "./frame-painter";
import { asPredictions, showTopClasses, type TopClass } from "./top-list";

export const PANEL_SEPARATOR = " | ";

/** The panel names of a frame label, or null for a frame of one picture. */
export function panelNames(label: string): string[] | null {
  if (!label.includes(PANEL_SEPARATOR)) return null;
  return label.split(PANEL_SEPARATOR).map((name) => name.trim());
}

interface Panel {
  name: string;
  canvas: HTMLCanvasElement;
  note: HTMLElement;
  top: HTMLOListElement;
}

export class PanelStrip implements FrameSurface {
  readonly element: HTMLElement;
  private readonly panels: Panel[];

  constructor(readonly label: string) {
    const names = panelNames(label) ?? [label];
    this.panels = names.map((name) => ({
      name,
      canvas: h("canvas", { "data-testid": "panel-canvas", "data-panel": name, width: 224, height: 224 }),
      note: h("span", { class: "note", "data-testid": "panel-note" }),
      top: h("ol", { class: "predictions", "data-testid": "panel-top", "data-panel": name, hidden: true }),
    }));
    this.element = h(
      "div",
      { class: "panels", "data-testid": "panels", "data-label": label, style: `--panels:${names.length}` },
      ...this.panels.map((panel) =>
        h(
          "figure",
          { class: "panel", "data-panel": panel.name },
          panel.canvas,
          h("figcaption", {}, h("span", { class: "name" }, panel.name), panel.note),
          panel.top,
        ),
      ),
    );
  }

  get names(): string[] {
    return this.panels.map((panel) => panel.name);
  }

  /** Each panel's part of the frame on its own canvas: panel i is columns [i·W/n, (i+1)·W/n). */
  draw(bitmap: ImageBitmap, frame: FrameEvent): void {
    const count = this.panels.length;
    this.panels.forEach((panel, index) => {
      const left = Math.round((index * bitmap.width) / count);
      const width = Math.round(((index + 1) * bitmap.width) / count) - left;
      const { canvas } = panel;
      if (canvas.width !== width || canvas.height !== bitmap.height) {
        canvas.width = width;
        canvas.height = bitmap.height;
      }
      canvas.getContext("2d")?.drawImage(bitmap, left, 0, width, bitmap.height, 0, 0, width, bitmap.height);
      canvas.dataset.seq = String(frame.seq);
      if (frame.step !== null && frame.step !== undefined) canvas.dataset.step = String(frame.step);
    });
  }

  /** The top classes under each panel that `tops` names; panels it does not name keep theirs. */
  setTops(tops: Record<string, TopClass[]>, step: number | null): void {
    for (const panel of this.panels) {
      const top = tops[panel.name];
      if (!Array.isArray(top)) continue;
      showTopClasses(panel.top, asPredictions(top), "panel-prediction");
      panel.top.hidden = false;
      if (step !== null) panel.top.dataset.step = String(step);
    }
  }

  /** A note after the panel's name in its caption, e.g. "×12.5 amplified"; "" for none. */
  setNote(name: string, note: string): void {
    const panel = this.panels.find((each) => each.name === name);
    if (panel) panel.note.textContent = note ? ` ${note}` : "";
  }
}
