// The notebook widget's front end (anywidget: `convlens.show`, `convlens.compare`). It draws the same
// elements as the page, <convlens-job-view> or <convlens-compare>, in the cell's output and remakes the
// element when the kernel changes a trait. Built on its own into dist/assets/widget.js, one module with
// the elements and socket.io-client, which the kernel sends as the widget's `_esm`.

import { ConvlensCodeMap } from "./code-map";
import { ConvlensCompare } from "./compare";
import { ConvlensJobView } from "./job-view";

/** What anywidget's `model` offers that the widget uses. */
interface WidgetModel {
  get(name: string): unknown;
  on(event: string, callback: () => void): void;
  off(event: string, callback: () => void): void;
}

/** The kernel's traits (convlens.notebook.ConvlensWidget) the element is made from. */
const TRAITS = [
  "view",
  "server",
  "token",
  "job",
  "model",
  "model_b",
  "image",
  "target",
  "methods",
  "autorun",
];
/** The key token.ts keeps the server's token under, which both elements read. */
const TOKEN_KEY = "convlens-token";

function defineElements(): void {
  // A second widget, a re-run cell or the page's own convlens.js may have defined them already.
  if (!customElements.get("convlens-code-map")) customElements.define("convlens-code-map", ConvlensCodeMap);
  if (!customElements.get("convlens-job-view")) customElements.define("convlens-job-view", ConvlensJobView);
  if (!customElements.get("convlens-compare")) customElements.define("convlens-compare", ConvlensCompare);
}

function text(model: WidgetModel, name: string): string {
  const value = model.get(name);
  return value === null || value === undefined ? "" : String(value);
}

function element(model: WidgetModel): HTMLElement {
  const token = text(model, "token");
  if (token) {
    try {
      localStorage.setItem(TOKEN_KEY, token);
    } catch {
      // storage refused: the element asks for the token on its first 401
    }
  }
  const server = text(model, "server");
  if (text(model, "view") === "compare") {
    const compare = document.createElement("convlens-compare");
    const attributes: [string, string][] = [
      ["server", server],
      ["model", text(model, "model")],
      ["model-b", text(model, "model_b")],
      ["image", text(model, "image")],
      ["target", text(model, "target")],
      ["methods", text(model, "methods")],
    ];
    for (const [name, value] of attributes) if (value) compare.setAttribute(name, value);
    if (model.get("autorun")) compare.setAttribute("autorun", "");
    return compare;
  }
  const view = document.createElement("convlens-job-view");
  view.setAttribute("server", server);
  view.setAttribute("job", text(model, "job"));
  return view;
}

function render({ model, el }: { model: WidgetModel; el: HTMLElement }): () => void {
  defineElements();
  el.classList.add("convlens-widget");
  const show = () => el.replaceChildren(element(model));
  show();
  for (const name of TRAITS) model.on(`change:${name}`, show);
  return () => {
    for (const name of TRAITS) model.off(`change:${name}`, show);
    el.replaceChildren(); // the job view's socket closes when it leaves the page
  };
}

export default { render };
