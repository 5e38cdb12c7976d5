// Building DOM without a framework: h("p", {class: "note"}, "text", child).

type Attributes = Record<string, string | number | boolean | null | undefined>;
type Child = Node | string | number | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

export function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace every child of `parent`. */
export function replaceChildren(parent: Element | ShadowRoot, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, children);
}

/** A constructable style sheet from CSS text, for a shadow root's adoptedStyleSheets. */
export function sheet(css: string): CSSStyleSheet {
  const styles = new CSSStyleSheet();
  styles.replaceSync(css);
  return styles;
}

export function formatNumber(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const magnitude = Math.abs(value);
  if (magnitude !== 0 && (magnitude >= 1e5 || magnitude < 1e-3)) return value.toExponential(2);
  return Number(value.toPrecision(4)).toString();
}

/** Calls `run` at most once every `ms` milliseconds: a request in between is served once the time is up. */
export class Throttle {
  private last = -Infinity;
  private timer = 0;

  constructor(
    private readonly ms: number,
    private readonly run: () => void,
  ) {}

  request(): void {
    if (this.timer) return;
    const wait = this.last + this.ms - performance.now();
    if (wait <= 0) this.now();
    else this.timer = window.setTimeout(() => this.now(), wait);
  }

  /** Run at once, serving any pending request. */
  now(): void {
    this.cancel();
    this.last = performance.now();
    this.run();
  }

  cancel(): void {
    window.clearTimeout(this.timer);
    this.timer = 0;
  }
}
