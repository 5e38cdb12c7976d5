// <convlens-compare server model model-b image target methods autorun>: one image and class through
// every attribution method, side by side, each map normalised the same way (heatmap.ts); with a second
// model, the same methods on both models side by side. Rows are methods, columns models.
//
// Attributes preselect (all optional): `model`, `model-b` (a second model), `image`, `target` (a class
// index), `methods` (comma-separated names), `autorun` (start as soon as loaded); `server` as for
// <convlens-app>. compare.html copies its query string onto them.

import {
  ApiClient,
  ApiError,
  ATTRIBUTION_MAP,
  type MethodInfo,
  type ModelInfo,
  type Prediction,
} from "./api";
import { ClassChoiceError, ClassPicker } from "./class-picker";
import { ColourLegend } from "./colour-legend";
import { CompareCell, SETTLED } from "./compare-cell";
import { h, replaceChildren, sheet } from "./dom";
import { COMPARE_PERCENTILE, colourTable } from "./heatmap";
import { ImagePicker } from "./image-picker";
import { JobFeed } from "./job-feed";
import { pageFrame } from "./page";
import { ParamForm } from "./param-form";
import classPickerCss from "./styles/class-picker.css?inline";
import css from "./styles/compare.css?inline";
import legendCss from "./styles/legend.css?inline";
import pageCss from "./styles/page.css?inline";
import theme from "./styles/theme.css?inline";

/** Parameters the grid sets itself: the shared class, and the overlay it blends in the page. Layers are
 * left to each model's default, since two models' layer names differ. */
const SHARED_PARAMS = new Set(["target", "overlay"]);
const DEFAULT_OPACITY = 1;

let styles: CSSStyleSheet[] | null = null;

interface MethodRow {
  method: MethodInfo;
  element: HTMLElement;
  checkbox: HTMLInputElement;
  form: ParamForm;
}

export class ConvlensCompare extends HTMLElement {
  static observedAttributes = ["server"];

  private readonly root: ShadowRoot;
  private api = new ApiClient();
  private feed: JobFeed | null = null;
  private started = false;
  private generation = 0;
  private models: ModelInfo[] = [];
  private readonly methodLists = new Map<string, Promise<MethodInfo[]>>();
  private readonly labelLists = new Map<string, Promise<string[]>>();
  private readonly topClasses = new Map<string, Promise<Prediction[]>>();
  private methodsOf = new Map<string, MethodInfo[]>();
  private rows: MethodRow[] = [];
  private cells: CompareCell[] = [];
  private picker: ClassPicker;

  private readonly modelSelect: HTMLSelectElement;
  private readonly modelSelectB: HTMLSelectElement;
  private readonly images: ImagePicker;
  private readonly classSlot: HTMLElement;
  private readonly classError: HTMLElement;
  private readonly methodsEl: HTMLElement;
  private readonly opacity: HTMLInputElement;
  private readonly opacityReadout: HTMLOutputElement;
  private readonly legend = new ColourLegend();
  private readonly runButton: HTMLButtonElement;
  private readonly runError: HTMLElement;
  private readonly grid: HTMLElement;
  private readonly loadError: HTMLElement;

  constructor() {
    super();
    this.root = this.attachShadow({ mode: "open" });
    styles ??= [sheet(theme), sheet(legendCss), sheet(classPickerCss), sheet(pageCss), sheet(css)];
    this.root.adoptedStyleSheets = styles;

    this.modelSelect = h("select", { id: "model", "data-testid": "compare-model" });
    this.modelSelectB = h("select", { id: "model-b", "data-testid": "compare-model-b" });
    for (const select of [this.modelSelect, this.modelSelectB]) {
      select.addEventListener("change", () => void this.chooseModels());
    }
    this.images = new ImagePicker(this.api, () => void this.offerTopClasses());
    this.picker = this.makePicker([]);
    this.classSlot = h("div", {}, this.picker.element);
    this.classError = h("p", {
      class: "error",
      role: "alert",
      "data-testid": "compare-class-error",
      hidden: true,
    });
    this.methodsEl = h("div", { class: "method-rows", "data-testid": "compare-methods" });
    this.opacity = h("input", {
      id: "opacity",
      type: "range",
      min: 0,
      max: 1,
      step: 0.01,
      value: DEFAULT_OPACITY,
      "data-testid": "compare-opacity",
    });
    this.opacityReadout = h("output", { for: "opacity" }, `${DEFAULT_OPACITY * 100}%`);
    this.opacity.addEventListener("input", () => {
      this.opacityReadout.textContent = `${Math.round(this.currentOpacity * 100)}%`;
      for (const cell of this.cells) cell.setOpacity(this.currentOpacity);
    });
    this.runButton = h(
      "button",
      { type: "submit", class: "primary", "data-testid": "compare-run", disabled: true },
      "Compare",
    );
    this.runError = h("p", { class: "error", role: "alert", "data-testid": "compare-error", hidden: true });
    this.grid = h("div", { class: "grid", "data-testid": "compare-grid", "data-state": "idle" });
    this.loadError = h("p", { class: "error banner", role: "alert", hidden: true });

    replaceChildren(
      this.root,
      pageFrame({
        tagline: "compare attribution maps",
        nav: h("a", { class: "nav", href: "/", "data-testid": "home-link" }, "← one method at a time"),
        banner: this.loadError,
        controls: [
          h(
            "section",
            { class: "panel" },
            h("h2", {}, "Models"),
            h("div", { class: "field" }, h("label", { for: "model" }, "Model"), this.modelSelect),
            h(
              "div",
              { class: "field" },
              h("label", { for: "model-b" }, "Side by side with"),
              this.modelSelectB,
              h("small", { class: "help" }, "a second model: each method on both, in two columns"),
            ),
          ),
          h("section", { class: "panel" }, h("h2", {}, "Image"), this.images.element),
          h(
            "section",
            { class: "panel" },
            h("h2", {}, h("label", { for: "target" }, "Class")),
            this.classSlot,
            h("small", { class: "help" }, "empty: each model's own top prediction"),
            this.classError,
          ),
          h("section", { class: "panel" }, h("h2", {}, "Methods"), this.methodsEl),
          h("div", { class: "run-row" }, this.runButton),
          this.runError,
        ],
        submit: () => void this.run(),
        view: [
          h(
            "div",
            { class: "scale panel" },
            h("label", { class: "opacity", for: "opacity" }, "Map opacity ", this.opacityReadout),
            this.opacity,
            this.legend.element,
          ),
          this.grid,
        ],
      }),
    );
  }

  private get currentOpacity(): number {
    return Number(this.opacity.value);
  }

  connectedCallback(): void {
    if (this.started) return;
    this.started = true;
    void this.load();
  }

  disconnectedCallback(): void {
    this.feed?.close();
    this.feed = null;
  }

  attributeChangedCallback(): void {
    this.api = new ApiClient(this.getAttribute("server") ?? "");
    this.images.api = this.api;
    this.root
      .querySelector<HTMLAnchorElement>('[data-testid="home-link"]')
      ?.setAttribute("href", this.api.url("/"));
    if (this.started) void this.load();
  }

  private async load(): Promise<void> {
    this.loadError.hidden = true;
    try {
      const [models, images] = await Promise.all([this.api.models(), this.api.images()]);
      this.models = models.filter((model) => !model.error);
      // Titles repeat across a model's formats: the file name tells them apart.
      const option = (model: ModelInfo) =>
        h("option", { value: model.id }, model.title ? `${model.title} — ${model.id}` : model.id);
      replaceChildren(this.modelSelect, ...this.models.map(option));
      replaceChildren(this.modelSelectB, h("option", { value: "" }, "— none —"), ...this.models.map(option));
      const wanted = (name: string) => this.models.find((m) => m.id === this.getAttribute(name));
      const first = wanted("model") ?? this.models.find((m) => m.default) ?? this.models[0];
      if (!first) throw new Error("the server has no models loaded");
      this.modelSelect.value = first.id;
      this.modelSelectB.value = wanted("model-b")?.id ?? "";
      this.images.setImages(images);
      const image = this.getAttribute("image");
      if (image) this.images.select(image);
      await this.chooseModels();
      const target = this.getAttribute("target");
      if (target && /^\d+$/.test(target)) this.picker.set(Number(target));
      const methods = this.getAttribute("methods");
      if (methods) {
        const names = new Set(methods.split(",").map((name) => name.trim()));
        for (const row of this.rows) row.checkbox.checked = names.has(row.method.name);
      }
      void this.showLegend();
      if (this.hasAttribute("autorun")) void this.run();
    } catch (error) {
      this.loadError.textContent = `Could not load from the server: ${error instanceof Error ? error.message : String(error)}`;
      this.loadError.hidden = false;
    }
  }

  private async showLegend(): Promise<void> {
    try {
      const table = await colourTable(this.api, "inferno");
      this.legend.show(table, {
        low: "0",
        high: `1 = p${COMPARE_PERCENTILE}`,
        caption:
          `Every map the same way: its positive part only (counter-evidence is black), divided by its own ` +
          `${COMPARE_PERCENTILE}th percentile and clipped to [0, 1], in inferno. Under each map, what 1 stands for ` +
          `in that method's own units.`,
      });
    } catch (error) {
      this.legend.element.append(h("p", { class: "error" }, `colour map: ${String(error)}`));
    }
  }

  private chosenModels(): string[] {
    const a = this.modelSelect.value;
    const b = this.modelSelectB.value;
    return b && b !== a ? [a, b] : [a];
  }

  private cached<T>(cache: Map<string, Promise<T>>, key: string, load: () => Promise<T>): Promise<T> {
    let value = cache.get(key);
    if (!value) {
      value = load();
      value.catch(() => cache.delete(key));
      cache.set(key, value);
    }
    return value;
  }

  /** Methods and class labels for the chosen models; the method list keeps what was ticked. */
  private async chooseModels(): Promise<void> {
    const generation = ++this.generation;
    const models = this.chosenModels();
    const [first] = models;
    if (!first) return;
    this.runButton.disabled = true;
    this.runError.hidden = true;
    try {
      const [lists, labels] = await Promise.all([
        Promise.all(models.map((id) => this.cached(this.methodLists, id, () => this.api.methods(id)))),
        this.cached(this.labelLists, first, () => this.api.labels(first)),
      ]);
      if (generation !== this.generation) return;
      this.methodsOf = new Map(models.map((id, i) => [id, lists[i] ?? []]));
      this.renderMethods(models);
      let kept: number | null;
      try {
        kept = this.picker.read();
      } catch {
        kept = null;
      }
      this.picker = this.makePicker(labels, kept);
      replaceChildren(this.classSlot, this.picker.element);
      this.runButton.disabled = this.rows.length === 0;
      await this.offerTopClasses();
    } catch (error) {
      if (generation !== this.generation) return;
      this.runError.textContent = `model: ${error instanceof ApiError ? error.reason : String(error)}`;
      this.runError.hidden = false;
    }
  }

  private makePicker(labels: string[], initial: number | null = null): ClassPicker {
    return new ClassPicker({
      id: "target",
      name: "target",
      testid: "compare-target",
      labels,
      nullable: true,
      initial,
    });
  }

  private renderMethods(models: string[]): void {
    const wasChecked = new Map(this.rows.map((row) => [row.method.name, row.checkbox.checked]));
    const seen = new Map<string, MethodInfo>();
    for (const id of models) {
      for (const method of this.methodsOf.get(id) ?? []) {
        if (method.tags?.includes(ATTRIBUTION_MAP) && !seen.has(method.name)) seen.set(method.name, method);
      }
    }
    this.rows = [...seen.values()].map((method) => {
      const unavailable = models
        .map((id) => {
          const reason = this.methodsOf.get(id)?.find((m) => m.name === method.name)?.unavailable;
          return reason ? `${id}: ${reason}` : "";
        })
        .filter(Boolean);
      const runsSomewhere = unavailable.length < models.length;
      const checkbox = h("input", {
        type: "checkbox",
        "data-testid": "compare-method",
        "data-method": method.name,
        checked: wasChecked.get(method.name) ?? runsSomewhere,
      });
      const params = method.params.filter(
        (p) => !SHARED_PARAMS.has(p.name) && p.type !== "layer" && p.type !== "class",
      );
      const form = new ParamForm(params, {
        layers: [],
        defaultLayer: null,
        labels: [],
        idPrefix: `${method.name}-`,
      });
      const element = h(
        "div",
        { class: "method-row", "data-testid": "compare-method-row", "data-method": method.name },
        h("label", { class: "check" }, checkbox, h("span", {}, method.title || method.name)),
        unavailable.length > 0 && h("small", { class: "help unavailable" }, unavailable.join("; ")),
        params.length > 0 && h("details", {}, h("summary", {}, "parameters"), form.element),
      );
      return { method, element, checkbox, form };
    });
    replaceChildren(
      this.methodsEl,
      ...(this.rows.length > 0
        ? this.rows.map((row) => row.element)
        : [h("p", { class: "muted" }, "No attribution method is installed.")]),
    );
  }

  private async offerTopClasses(): Promise<void> {
    const [model] = this.chosenModels();
    const image = this.images.selected;
    const picker = this.picker;
    if (!model || !image) return;
    picker.setTopClasses("…");
    try {
      const top = await this.cached(this.topClasses, `${model}\n${image}`, () =>
        this.api.predict(model, image, 5),
      );
      if (picker === this.picker && image === this.images.selected) picker.setTopClasses(top);
    } catch (error) {
      if (picker === this.picker) picker.setTopClasses(`unavailable: ${String(error)}`);
    }
  }

  private showError(message: string): void {
    this.runError.textContent = message;
    this.runError.hidden = !message;
  }

  private async run(): Promise<void> {
    this.showError("");
    this.classError.hidden = true;
    const image = this.images.selected;
    if (!image) return this.showError("image: choose an image");
    let target: number | null;
    try {
      target = this.picker.read();
    } catch (error) {
      this.classError.textContent = error instanceof ClassChoiceError ? error.message : String(error);
      this.classError.hidden = false;
      return;
    }
    const chosen = this.rows.filter((row) => row.checkbox.checked);
    if (chosen.length === 0) return this.showError("methods: tick at least one method");
    const params = new Map<string, Record<string, unknown>>();
    for (const row of chosen) {
      const { values, errors } = row.form.values();
      for (const error of errors) row.form.showError(error.field, error.error);
      if (errors.length > 0)
        return this.showError(`${row.method.name}: ${errors.map((e) => e.field).join(", ")}`);
      params.set(row.method.name, { ...values, target });
    }

    this.stopAll();
    const models = this.chosenModels();
    const feed = (this.feed ??= new JobFeed(this.api.server));
    const table = () => colourTable(this.api, "inferno");
    const settled = () => {
      if (this.cells.every((cell) => SETTLED.has(cell.state))) this.grid.dataset.state = "done";
    };
    this.grid.style.setProperty("--columns", String(models.length));
    this.grid.dataset.state = "running";
    const header = [
      h("div", { class: "corner" }),
      ...models.map((id) =>
        h("div", { class: "column-head", "data-testid": "column", "data-model": id }, this.modelTitle(id)),
      ),
    ];
    const body: HTMLElement[] = [];
    const starts: (() => Promise<void>)[] = [];
    this.cells = [];
    for (const row of chosen) {
      body.push(
        h(
          "div",
          { class: "row-head", "data-testid": "row", "data-method": row.method.name },
          row.method.title,
        ),
      );
      for (const model of models) {
        const cell = new CompareCell(row.method.name, model, this.api, table, settled);
        this.cells.push(cell);
        body.push(cell.element);
        const info = this.methodsOf.get(model)?.find((m) => m.name === row.method.name);
        if (!info) cell.unavailable(`not offered for ${model}`);
        else if (info.unavailable) cell.unavailable(info.unavailable);
        else
          starts.push(async () => {
            const request = {
              method: row.method.name,
              model,
              image,
              params: params.get(row.method.name) ?? {},
            };
            // A newer comparison replaced this grid while its jobs were being started.
            if (!this.cells.includes(cell)) return;
            try {
              const job = await this.api.startJob(request);
              if (!this.cells.includes(cell)) {
                this.api.stopJob(job.id).catch(() => undefined);
                return;
              }
              cell.jobId = job.id;
              feed.watch(
                job.id,
                cell.handlers(
                  (seq) => feed.ack(job.id, seq),
                  () => this.currentOpacity,
                ),
              );
            } catch (error) {
              const reason = error instanceof ApiError ? error.message : String(error);
              cell.unavailable(`not started: ${reason}`, "failed");
            }
          });
      }
    }
    replaceChildren(this.grid, ...header, ...body);
    settled();
    // One at a time, so the server queues them in the grid's order.
    for (const start of starts) await start();
  }

  private modelTitle(id: string): string {
    const model = this.models.find((m) => m.id === id);
    return model ? `${model.title || model.id} · ${model.format}` : id;
  }

  /** Stop the previous comparison's jobs that are still running. */
  private stopAll(): void {
    for (const cell of this.cells) {
      cell.dispose();
      if (!cell.jobId) continue;
      this.feed?.unwatch(cell.jobId);
      if (!SETTLED.has(cell.state)) this.api.stopJob(cell.jobId).catch(() => undefined);
    }
    this.cells = [];
  }
}

declare global {
  interface HTMLElementTagNameMap {
    "convlens-compare": ConvlensCompare;
  }
}
