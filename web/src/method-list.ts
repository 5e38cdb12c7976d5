// The methods a model offers, grouped by topic; unavailable ones say why.

import type { MethodInfo } from "./api";
import { h, replaceChildren } from "./dom";

export class MethodList {
  readonly element: HTMLElement;
  selected: string | null = null;
  private methods: MethodInfo[] = [];
  private readonly list: HTMLElement;
  private readonly error: HTMLElement;

  constructor(private readonly onSelect: (method: MethodInfo) => void) {
    this.list = h("div", { class: "methods", role: "radiogroup", "aria-label": "methods" });
    this.error = h("p", { class: "error", role: "alert", "data-testid": "method-error", hidden: true });
    this.element = h("div", { "data-field": "method" }, this.list, this.error);
  }

  /** Replace the list; keeps the selection when it is still available, else picks the first available. */
  setMethods(methods: MethodInfo[], prefer: string | null = null): void {
    this.methods = methods;
    this.render();
    const usable = (name: string | null) => methods.find((m) => m.name === name && !m.unavailable);
    const choice = usable(prefer) ?? usable(this.selected) ?? methods.find((m) => !m.unavailable);
    this.selected = null;
    if (choice) this.select(choice.name);
  }

  select(name: string): void {
    const method = this.methods.find((candidate) => candidate.name === name);
    if (!method || method.unavailable) return;
    const changed = this.selected !== name;
    this.selected = name;
    for (const entry of this.list.querySelectorAll<HTMLElement>("[data-method]")) {
      entry.setAttribute("aria-checked", String(entry.dataset.method === name));
    }
    this.showError("");
    if (changed) this.onSelect(method);
  }

  showError(message: string): void {
    this.error.textContent = message ? `method: ${message}` : "";
    this.error.hidden = !message;
  }

  private render(): void {
    const topics = new Map<string, MethodInfo[]>();
    for (const method of this.methods) {
      const group = topics.get(method.topic) ?? [];
      group.push(method);
      topics.set(method.topic, group);
    }
    replaceChildren(
      this.list,
      ...[...topics].map(([topic, methods]) =>
        h(
          "section",
          { class: "topic" },
          h("h3", {}, topic || "Other"),
          ...methods.map((method) => this.entry(method)),
        ),
      ),
    );
    if (this.methods.length === 0) this.list.append(h("p", { class: "muted" }, "No methods are installed."));
  }

  private entry(method: MethodInfo): HTMLElement {
    const entry = h(
      "button",
      {
        type: "button",
        class: "method",
        role: "radio",
        "data-testid": "method",
        "data-method": method.name,
        "aria-checked": String(method.name === this.selected),
        disabled: Boolean(method.unavailable),
        title: method.unavailable ?? method.description ?? "",
      },
      h("span", { class: "method-title" }, method.title || method.name),
      method.unavailable
        ? h("small", { class: "unavailable", "data-testid": "method-unavailable" }, method.unavailable)
        : method.description && h("small", { class: "help" }, method.description),
    );
    entry.addEventListener("click", () => this.select(method.name));
    return entry;
  }
}
