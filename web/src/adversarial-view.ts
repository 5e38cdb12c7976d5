// An adversarial attack's summary under its three panels (original | perturbation | adversarial): the
// perturbation's current L∞ and L2 norms, the step where the label flipped, and, when the attack was
// evaluated on other models too, which of them are fooled.

import type { JobResult } from "./api";
import { h, replaceChildren } from "./dom";
import type { TopClass } from "./top-list";

export const ATTACK_METHOD = "adversarial_attack";

/** The metric whose value is the perturbation panel's amplification. */
export const SCALE_SUFFIX = " scale (×)";

/** One model of the result's `transfer` list: its top class before and after, and whether it was fooled. */
export interface TransferRow {
  model: string;
  before: TopClass;
  after: TopClass;
  fooled: boolean;
  target_reached?: boolean | null;
}

interface Flip {
  step: number;
  from: string;
  to: string;
  /** Whether the step before it was seen unflipped: the step is then exact, not an upper bound. */
  exact: boolean;
}

const LINF = /^(l∞|linf)\b/i;
const L2 = /^l2\b/i;

function percent(probability: number): string {
  return `${(probability * 100).toFixed(1)}%`;
}

export class AttackSummary {
  readonly element: HTMLElement;
  private readonly norms: HTMLElement;
  private readonly flipEl: HTMLElement;
  private readonly transferEl: HTMLElement;
  private flip: Flip | null = null;
  private lastUnflipped: number | null = null;

  constructor() {
    this.norms = h("p", { class: "facts", "data-testid": "attack-norms" }, "L∞ — · L2 —");
    this.flipEl = h("p", { class: "facts", "data-testid": "attack-flip" }, "the label has not flipped yet");
    this.transferEl = h("div", { "data-testid": "transfer", hidden: true });
    this.element = h("div", { class: "attack" }, this.norms, this.flipEl, this.transferEl);
  }

  /** The newest metrics: the norms of the perturbation, in grey levels (/255). */
  metrics(values: Record<string, number>): void {
    const find = (pattern: RegExp) => Object.keys(values).find((name) => pattern.test(name));
    const linf = find(LINF);
    const l2 = find(L2);
    if (linf === undefined && l2 === undefined) return;
    const shown = (name: string | undefined) => (name === undefined ? "—" : `${values[name].toFixed(2)}/255`);
    this.norms.textContent = `L∞ ${shown(linf)} · L2 ${shown(l2)}`;
  }

  /** The panels' newest top classes: the first step seen where the adversarial's top-1 is not the original's. */
  predictions(tops: Record<string, TopClass[]>, step: number | null): void {
    const original = tops.original?.[0];
    const adversarial = tops.adversarial?.[0];
    if (!original || !adversarial || step === null || this.flip) return;
    if (adversarial.class === original.class) {
      this.lastUnflipped = step;
      return;
    }
    const exact = this.lastUnflipped === step - 1 || step === 0;
    this.flip = { step, from: original.label, to: adversarial.label, exact };
    this.showFlip(
      `label flipped ${exact ? "at" : "by"} step ${step}: ${original.label} → ${adversarial.label}`,
    );
  }

  /** The finished attack: its exact flip step (`flipped_at`) and the `transfer` table, when there is one. */
  result(result: JobResult | null): void {
    const data = result?.data ?? {};
    const before = (data.top5_before as TopClass[] | undefined)?.[0];
    const after = (data.top5_after as TopClass[] | undefined)?.[0];
    const flippedAt = data.flipped_at;
    if (typeof flippedAt === "number") {
      const flippedTo = (data.flipped_to as { label?: string } | null | undefined)?.label;
      const from = before?.label ?? "?";
      const to = flippedTo ?? after?.label ?? "?";
      this.showFlip(`label flipped at step ${flippedAt}: ${from} → ${to}`);
    } else if (flippedAt === null && before) {
      this.flipEl.dataset.flipped = "false";
      this.flipEl.textContent = `the label did not flip: still ${before.label}`;
    }
    if (Array.isArray(data.transfer) && data.transfer.length > 0)
      this.showTransfer(data.transfer as TransferRow[]);
  }

  private showFlip(text: string): void {
    this.flipEl.textContent = text;
    this.flipEl.dataset.flipped = "true";
  }

  private showTransfer(rows: TransferRow[]): void {
    const targeted = rows.some((row) => typeof row.target_reached === "boolean");
    const cell = (top: TopClass) => `${top.label} ${percent(top.probability)}`;
    replaceChildren(
      this.transferEl,
      h("h4", {}, "Transfer: the same adversarial picture on the other models"),
      h(
        "table",
        { class: "numbers" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", {}, "model"),
            h("th", {}, "before"),
            h("th", {}, "after"),
            h("th", {}, "fooled"),
            targeted && h("th", {}, "target reached"),
          ),
        ),
        h(
          "tbody",
          {},
          ...rows.map((row) =>
            h(
              "tr",
              { "data-testid": "transfer-row", "data-model": row.model },
              h("td", {}, row.model),
              h("td", {}, cell(row.before)),
              h("td", {}, cell(row.after)),
              h("td", { "data-fooled": row.fooled }, row.fooled ? "yes" : "no"),
              targeted && h("td", {}, row.target_reached ? "yes" : "no"),
            ),
          ),
        ),
      ),
    );
    this.transferEl.hidden = false;
  }
}
