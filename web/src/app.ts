// <convlens-app server="http://host:port">: the whole page. Left: model, image,
// method and its parameters, Run. Right: <convlens-job-view> of the current run.
// The page remembers the shown job in the URL (#job=<id>), so a reload catches up.

import {
  ApiClient,
  ApiError,
  type DatasetInfo,
  type FieldError,
  type Job,
  type JobSummary,
  type JobRequest,
  type MethodInfo,
  type ModelDetail,
  type Prediction,
} from "./api";
import { h, replaceChildren, sheet } from "./dom";
import { ImagePicker } from "./image-picker";
import type { ConvlensJobView, OpenMethod } from "./job-view";
import { MethodList } from "./method-list";
import { pageFrame } from "./page";
import { ParamForm } from "./param-form";
import css from "./styles/app.css?inline";
import classPickerCss from "./styles/class-picker.css?inline";
import pageCss from "./styles/page.css?inline";
import theme from "./styles/theme.css?inline";

const RECENT_RUNS = 8;

let styles: CSSStyleSheet[] | null = null;

export class ConvlensApp extends HTMLElement {
  static observedAttributes = ["server"];

  private readonly root: ShadowRoot;
  private api = new ApiClient();
  private model: ModelDetail | null = null;
  private readonly labels = new Map<string, Promise<string[]>>();
  private readonly topClasses = new Map<string, Promise<Prediction[]>>();
  private method: MethodInfo | null = null;
  private form: ParamForm | null = null;
  /** Values for the next form of `method` (from another view's offer, e.g. "Apply this patch"). */
  private presets: OpenMethod | null = null;
  /** Guards against answers for a model or method the user has since left. */
  private generation = 0;
  private started = false;

  private readonly modelSelect: HTMLSelectElement;
  private readonly modelInfo: HTMLElement;
  private readonly modelError: HTMLElement;
  private readonly images: ImagePicker;
  private readonly methods: MethodList;
  private readonly methodInfo: HTMLElement;
  private readonly formSlot: HTMLElement;
  private readonly seedInput: HTMLInputElement;
  private readonly seedError: HTMLElement;
  private readonly runButton: HTMLButtonElement;
  private readonly runError: HTMLElement;
  private readonly recent: HTMLElement;
  private readonly jobView: ConvlensJobView;
  private readonly loadError: HTMLElement;
  private readonly compareLink: HTMLAnchorElement;
  private readonly apiLink: HTMLAnchorElement;
  private readonly galleryLink: HTMLAnchorElement;

  constructor() {
    super();
    this.root = this.attachShadow({ mode: "open" });
    styles ??= [sheet(theme), sheet(pageCss), sheet(css), sheet(classPickerCss)];
    this.root.adoptedStyleSheets = styles;

    this.modelSelect = h("select", { id: "model", "data-testid": "model-select" });
    this.modelSelect.addEventListener("change", () => void this.chooseModel(this.modelSelect.value));
    this.modelInfo = h("small", { class: "help" });
    this.modelError = h("p", { class: "error", role: "alert", "data-testid": "model-error", hidden: true });
    this.images = new ImagePicker(this.api, () => {
      this.clearRunError();
      this.updateCompareLink();
      void this.offerTopClasses();
    });
    this.methods = new MethodList((method) => void this.chooseMethod(method));
    this.methodInfo = h("div", { class: "method-info" });
    this.formSlot = h("div", {});
    this.seedInput = h("input", {
      id: "seed",
      type: "number",
      step: 1,
      min: 0,
      placeholder: "random",
      "data-testid": "seed",
    });
    this.seedError = h("span", { class: "error field-error", role: "alert", hidden: true });
    this.runButton = h(
      "button",
      { type: "submit", class: "primary run", "data-testid": "run", disabled: true },
      "Run",
    );
    this.runError = h("p", { class: "error", role: "alert", "data-testid": "run-error", hidden: true });
    this.recent = h("ol", { class: "recent", "data-testid": "recent" });
    this.jobView = h("convlens-job-view", { "data-testid": "job-view" });
    this.jobView.addEventListener("convlens-end", () => void this.refreshRecent());
    // A click on a code map opens that data-set image, "use as picture" a job's result image.
    this.jobView.addEventListener("convlens-open-image", (event) => this.openImage(event.detail.image));
    // "Apply this patch": apply_patch's form with the patch preset, on the chosen picture.
    this.jobView.addEventListener("convlens-open-method", (event) =>
      this.openMethod(event.detail.method, event.detail.params),
    );
    this.loadError = h("p", { class: "error banner", role: "alert", hidden: true });
    this.compareLink = h(
      "a",
      { class: "nav", href: "/compare.html", "data-testid": "compare-link" },
      "Compare methods →",
    );
    // The interactive API reference (Swagger UI on /api/openapi.json) and the gallery of every run of this
    // browser: pages of the server the app talks to (see attributeChangedCallback).
    this.apiLink = h("a", { href: "/api/docs", "data-testid": "api-link" }, "API");
    this.galleryLink = h(
      "a",
      { class: "gallery-link", href: "/gallery.html", "data-testid": "gallery-link" },
      "All runs →",
    );

    replaceChildren(
      this.root,
      pageFrame({
        tagline: "see inside image CNNs",
        nav: h("span", { class: "nav" }, this.apiLink, " · ", this.compareLink),
        banner: this.loadError,
        controls: [
          h(
            "section",
            { class: "panel" },
            h("h2", {}, h("label", { for: "model" }, "Model")),
            h(
              "div",
              { class: "field", "data-field": "model" },
              this.modelSelect,
              this.modelInfo,
              this.modelError,
            ),
          ),
          h("section", { class: "panel" }, h("h2", {}, "Image"), this.images.element),
          h("section", { class: "panel" }, h("h2", {}, "Method"), this.methods.element),
          h(
            "section",
            { class: "panel" },
            h("h2", {}, "Parameters"),
            this.methodInfo,
            this.formSlot,
            h(
              "div",
              { class: "field", "data-field": "seed" },
              h("label", { for: "seed" }, "Seed"),
              this.seedInput,
              h("small", { class: "help" }, "blank for a random seed; the same seed repeats a run"),
              this.seedError,
            ),
            h("div", { class: "run-row" }, this.runButton),
            this.runError,
          ),
          h("section", { class: "panel" }, h("h2", {}, "Recent runs"), this.recent, this.galleryLink),
        ],
        submit: () => void this.run(),
        view: [this.jobView],
      }),
    );
  }

  connectedCallback(): void {
    if (this.started) return;
    this.started = true;
    window.addEventListener("hashchange", () => this.showJobFromUrl());
    void this.load();
  }

  attributeChangedCallback(): void {
    this.api = new ApiClient(this.getAttribute("server") ?? "");
    this.images.api = this.api;
    this.apiLink.href = this.api.url("/api/docs");
    this.galleryLink.href = this.api.url("/gallery.html");
    const server = this.getAttribute("server");
    if (server) this.jobView.setAttribute("server", server);
    else this.jobView.removeAttribute("server");
    if (this.started) void this.load();
  }

  private async load(): Promise<void> {
    this.loadError.hidden = true;
    const wanted = new URLSearchParams(location.search);
    try {
      const [models, images] = await Promise.all([this.api.models(), this.api.images()]);
      replaceChildren(
        this.modelSelect,
        ...models.map((model) => h("option", { value: model.id }, model.title || model.id)),
      );
      this.images.setImages(images);
      const image = wanted.get("image");
      if (image) this.images.select(image);
      const model = models.find((m) => m.id === wanted.get("model")) ?? models[0];
      if (model) await this.chooseModel(model.id, wanted.get("method"));
      else this.modelError.textContent = "The server has no models loaded.";
      this.modelError.hidden = Boolean(model);
    } catch (error) {
      this.loadError.textContent = `Could not load from the server: ${String(error instanceof Error ? error.message : error)}`;
      this.loadError.hidden = false;
    }
    this.showJobFromUrl();
    void this.refreshRecent();
  }

  /** Chooses `image` (e.g. `dataset:digits:12`) and keeps it in the URL's `?image=`. */
  private openImage(image: string): void {
    this.images.select(image);
    const url = new URL(location.href);
    url.searchParams.set("image", image);
    history.replaceState(history.state, "", url);
    this.images.element.scrollIntoView({ block: "nearest" });
  }

  /** Chooses `method` with `params` in its form (an image id among them joins the form's choices). */
  private openMethod(method: string, params: Record<string, unknown>): void {
    for (const value of Object.values(params)) if (typeof value === "string") this.images.remember(value);
    if (this.method?.name === method && this.form) {
      this.form.preset(params);
    } else {
      this.presets = { method, params };
      this.methods.select(method);
      if (this.methods.selected !== method) {
        this.presets = null;
        this.showFieldError({ field: "method", error: `${method} is not available for this model` });
      }
    }
    this.formSlot.scrollIntoView({ block: "nearest" });
  }

  /** The comparison page, for the chosen model and image. */
  private updateCompareLink(): void {
    const query = new URLSearchParams();
    if (this.model) query.set("model", this.model.id);
    if (this.images.selected) query.set("image", this.images.selected);
    const server = this.getAttribute("server");
    if (server) query.set("server", server);
    this.compareLink.href = this.api.url(`/compare.html?${query}`);
  }

  private showJobFromUrl(): void {
    const job = new URLSearchParams(location.hash.slice(1)).get("job");
    if (job && job !== this.jobView.getAttribute("job")) this.jobView.setAttribute("job", job);
  }

  private async chooseModel(id: string, preferMethod: string | null = null): Promise<void> {
    const generation = ++this.generation;
    this.modelSelect.value = id;
    this.runButton.disabled = true;
    this.modelError.hidden = true;
    try {
      const [model, methods] = await Promise.all([this.api.model(id), this.api.methods(id)]);
      if (generation !== this.generation) return;
      this.model = model;
      this.updateCompareLink();
      const [h0, w0] = model.input_size ?? [0, 0];
      this.modelInfo.textContent = `${model.format} · ${h0}×${w0} input · ${model.num_classes} classes · ${model.layers.length} layers`;
      this.form = null;
      this.method = null;
      this.methods.setMethods(methods, preferMethod ?? this.methods.selected);
      if (!this.method) this.renderNoMethod();
    } catch (error) {
      if (generation !== this.generation) return;
      this.modelError.textContent = `model: ${error instanceof ApiError ? error.reason : String(error)}`;
      this.modelError.hidden = false;
    }
  }

  private async chooseMethod(method: MethodInfo): Promise<void> {
    const model = this.model;
    if (!model) return;
    const generation = ++this.generation;
    this.method = method;
    this.runButton.disabled = true;
    this.clearRunError();
    replaceChildren(
      this.methodInfo,
      h("strong", {}, method.title || method.name),
      method.description && h("p", {}, method.description),
      method.reference && h("p", { class: "reference" }, method.reference),
    );
    let labels: string[] = [];
    if (method.params.some((param) => param.type === "class")) {
      try {
        labels = await this.labelsOf(model.id);
      } catch {
        labels = [];
      }
      if (generation !== this.generation) return;
    }
    let datasets: DatasetInfo[] = [];
    if (method.params.some((param) => param.type === "dataset")) {
      try {
        datasets = await this.api.datasets();
      } catch {
        datasets = [];
      }
      if (generation !== this.generation) return;
    }
    this.form = new ParamForm(method.params, {
      layers: model.layers ?? [],
      defaultLayer: model.default_layer,
      labels,
      images: this.images.list(),
      datasets,
      api: this.api,
      modelId: model.id,
    });
    if (this.presets?.method === method.name) this.form.preset(this.presets.params);
    this.presets = null;
    replaceChildren(this.formSlot, this.form.element);
    this.runButton.disabled = false;
    void this.offerTopClasses();
  }

  /** The chosen image's top-5 classes on the chosen model, as quick picks for a class parameter. */
  private async offerTopClasses(): Promise<void> {
    const { form, model } = this;
    const image = this.images.selected;
    if (!form?.hasClassParam || !model) return;
    if (!image) {
      form.setTopClasses("choose an image");
      return;
    }
    const key = `${model.id}\n${image}`;
    let top = this.topClasses.get(key);
    if (!top) {
      top = this.api.predict(model.id, image, 5);
      top.catch(() => this.topClasses.delete(key));
      this.topClasses.set(key, top);
    }
    form.setTopClasses("…");
    try {
      const predictions = await top;
      if (form === this.form && image === this.images.selected) form.setTopClasses(predictions);
    } catch (error) {
      if (form === this.form && image === this.images.selected)
        form.setTopClasses(`unavailable: ${error instanceof ApiError ? error.message : String(error)}`);
    }
  }

  private renderNoMethod(): void {
    replaceChildren(this.methodInfo, h("p", { class: "muted" }, "No method can run on this model."));
    this.formSlot.replaceChildren();
  }

  private labelsOf(model: string): Promise<string[]> {
    let labels = this.labels.get(model);
    if (!labels) {
      labels = this.api.labels(model);
      labels.catch(() => this.labels.delete(model));
      this.labels.set(model, labels);
    }
    return labels;
  }

  private clearRunError(): void {
    this.runError.hidden = true;
    this.seedError.hidden = true;
    this.form?.clearErrors();
    this.methods.showError("");
    this.images.showError("");
    this.modelError.hidden = true;
  }

  private async run(): Promise<void> {
    const { model, method, form } = this;
    const image = this.images.selected;
    if (!model || !method || !form) return;
    this.clearRunError();
    if (!image) {
      this.showFieldError({ field: "image", error: "choose or upload an image" });
      return;
    }
    const { values, errors } = form.values();
    const seedText = this.seedInput.value.trim();
    if (seedText !== "" && !Number.isInteger(Number(seedText))) {
      errors.push({ field: "seed", error: "expected an integer" });
    }
    if (errors.length > 0) {
      for (const error of errors) this.showFieldError(error);
      return;
    }
    const request: JobRequest = { method: method.name, model: model.id, image, params: values };
    if (seedText !== "") request.seed = Number(seedText);

    this.runButton.disabled = true;
    try {
      const job = await this.api.startJob(request);
      this.show(job);
    } catch (error) {
      if (error instanceof ApiError) this.showFieldError({ field: error.field, error: error.reason });
      else this.showFieldError({ field: "", error: String(error) });
    } finally {
      this.runButton.disabled = false;
    }
  }

  private show(job: Pick<Job, "id">): void {
    history.replaceState(null, "", `#job=${encodeURIComponent(job.id)}`);
    this.jobView.setAttribute("job", job.id);
    // In the one-column layout the view is below the form: bring it into sight.
    if (window.matchMedia("(max-width: 900px)").matches) this.jobView.scrollIntoView({ behavior: "smooth" });
    void this.refreshRecent();
  }

  /** Put a server or form error next to the control it names; anything else goes under Run. */
  private showFieldError({ field, error }: FieldError): void {
    let shown = false;
    if (field.startsWith("params.")) shown = this.form?.showError(field, error) ?? false;
    else if (field === "model") {
      this.modelError.textContent = `model: ${error}`;
      this.modelError.hidden = false;
      shown = true;
    } else if (field === "image") {
      this.images.showError(error);
      shown = true;
    } else if (field === "method") {
      this.methods.showError(error);
      shown = true;
    } else if (field === "seed") {
      this.seedError.textContent = error;
      this.seedError.hidden = false;
      shown = true;
    }
    this.runError.textContent = shown
      ? `Not started: ${field} — ${error}`
      : field
        ? `${field}: ${error}`
        : error;
    this.runError.dataset.field = field;
    this.runError.hidden = false;
  }

  private async refreshRecent(): Promise<void> {
    let jobs: JobSummary[];
    try {
      jobs = (await this.api.jobs(RECENT_RUNS)).jobs;
    } catch {
      return;
    }
    replaceChildren(
      this.recent,
      ...jobs.slice(0, RECENT_RUNS).map((job) => {
        const entry = h(
          "button",
          { type: "button", class: "recent-run", "data-job": job.id, title: job.id },
          h("span", {}, `${job.method} · ${job.image}`),
          h("span", { class: `badge state-${job.state}` }, job.state),
        );
        entry.addEventListener("click", () => this.show(job));
        return h("li", {}, entry);
      }),
    );
    if (jobs.length === 0) this.recent.append(h("li", { class: "muted" }, "none yet"));
  }
}

declare global {
  interface HTMLElementTagNameMap {
    "convlens-app": ConvlensApp;
  }
}
