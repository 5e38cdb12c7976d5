// The form for a method's parameters, generated from its Param schema (the README's API section).
// The server validates again; its errors come back by field ("params.steps") and
// are shown next to that field.

import {
  type ApiClient,
  ApiError,
  type DatasetInfo,
  type FieldError,
  type ImageInfo,
  type LayerInfo,
  type ModelInfo,
  type ParamSchema,
  type Prediction,
} from "./api";
import { ClassChoiceError, ClassPicker } from "./class-picker";
import { h, replaceChildren } from "./dom";
import { describeImageId } from "./image-picker";

export interface ParamFormContext {
  layers: LayerInfo[];
  defaultLayer: string | null;
  /** The model's class labels; only fetched when a method has a `class` parameter. */
  labels: string[];
  /** Prefixes the controls' ids, for several forms in one document. */
  idPrefix?: string;
  /** The server's images, offered by an `image` parameter (a second picture, such as a style image). */
  images?: ImageInfo[];
  /** The server's data sets, offered by a `dataset` parameter; only fetched when a method has one. */
  datasets?: DatasetInfo[];
  /** The server, for a `dataset` parameter's "Upload a zip…" control; without it there is none. */
  api?: ApiClient;
  /** The server's models, offered by a `models` parameter; fetched from `api` when not given. */
  models?: ModelInfo[];
  /** The run's model, marked (or left out) in a `models` parameter's list. */
  modelId?: string;
}

interface Field {
  param: ParamSchema;
  wrapper: HTMLElement;
  error: HTMLElement;
  read(): unknown;
  /** Shows `value` in the control; absent for controls that take no preset (class, data set, models). */
  write?(value: unknown): void;
  picker?: ClassPicker;
}

class InvalidValue extends Error {}

export class ParamForm {
  readonly element: HTMLElement;
  private readonly fields = new Map<string, Field>();

  constructor(params: ParamSchema[], context: ParamFormContext) {
    this.element = h("div", { class: "params", "data-testid": "params" });
    if (params.length === 0)
      this.element.append(h("p", { class: "muted" }, "This method has no parameters."));
    for (const param of params) {
      const field = buildField(param, context);
      this.fields.set(param.name, field);
      this.element.append(field.wrapper);
    }
    for (const param of params) if (param.channel_of) this.followLayer(param, context.layers);
  }

  /** A channel field takes its upper bound from the layer chosen in its `channel_of` field. */
  private followLayer(param: ParamSchema, layers: LayerInfo[]): void {
    const select = this.fields.get(param.channel_of ?? "")?.wrapper.querySelector("select");
    const field = this.fields.get(param.name);
    const input = field?.wrapper.querySelector("input");
    const help = field?.wrapper.querySelector(".help");
    if (!select || !input) return;
    const update = (): void => {
      const layer = layers.find((each) => each.name === select.value);
      const count = layer?.shape[0];
      if (count === undefined) {
        input.removeAttribute("max");
        delete input.dataset.channels;
      } else {
        input.max = String(count - 1);
        input.dataset.channels = String(count);
      }
      if (help) {
        const bounds = count === undefined ? describeBounds(param) : `0 – ${count - 1} (${count} channels)`;
        help.textContent = [param.description, bounds].filter(Boolean).join(" · ");
      }
    };
    select.addEventListener("change", update);
    update();
  }

  /** The parameters to send, and the fields that could not be read. */
  values(): { values: Record<string, unknown>; errors: FieldError[] } {
    const values: Record<string, unknown> = {};
    const errors: FieldError[] = [];
    for (const [name, field] of this.fields) {
      try {
        values[name] = field.read();
      } catch (error) {
        if (!(error instanceof InvalidValue)) throw error;
        errors.push({ field: `params.${name}`, error: error.message });
      }
    }
    return { values, errors };
  }

  /** Show `message` next to `field` ("params.steps"); false when no such field is on the form. */
  showError(field: string, message: string): boolean {
    const name = field.startsWith("params.") ? field.slice("params.".length) : null;
    const target = name === null ? undefined : this.fields.get(name);
    if (!target) return false;
    target.wrapper.classList.add("invalid");
    target.error.textContent = message;
    target.error.hidden = false;
    target.wrapper.querySelector<HTMLElement>("input, select")?.focus();
    return true;
  }

  /** Puts `values` (by parameter name) in their controls, as a user would have chosen them; an image id the
   * form does not offer yet is added to its choices. The names no field here takes are returned. */
  preset(values: Record<string, unknown>): string[] {
    const missed: string[] = [];
    for (const [name, value] of Object.entries(values)) {
      const write = this.fields.get(name)?.write;
      if (write) write(value);
      else missed.push(name);
    }
    return missed;
  }

  /** Whether a parameter is a class, so the image's top-5 classes are worth fetching. */
  get hasClassParam(): boolean {
    return [...this.fields.values()].some((field) => field.picker);
  }

  /** The image's top classes for every class parameter to offer; a string is a note instead. */
  setTopClasses(predictions: Prediction[] | string): void {
    for (const field of this.fields.values()) field.picker?.setTopClasses(predictions);
  }

  clearErrors(): void {
    for (const field of this.fields.values()) {
      field.wrapper.classList.remove("invalid");
      field.error.textContent = "";
      field.error.hidden = true;
    }
  }
}

function buildField(param: ParamSchema, context: ParamFormContext): Field {
  const id = `${context.idPrefix ?? ""}param-${param.name}`;
  const error = h("span", {
    class: "error field-error",
    role: "alert",
    "data-testid": `error-${param.name}`,
    hidden: true,
  });
  const { control, read, write, picker } = buildControl(param, context, id);
  const title = h("span", { class: "field-title" }, param.title || param.name);
  const bounds = describeBounds(param);
  const help = [param.description, bounds].filter(Boolean).join(" · ");
  const wrapper =
    param.type === "bool"
      ? h(
          "div",
          { class: "field field-bool", "data-field": `params.${param.name}` },
          h("label", { class: "check" }, control, title),
          help && h("small", { class: "help" }, help),
          error,
        )
      : h(
          "div",
          { class: "field", "data-field": `params.${param.name}` },
          h("label", { for: id }, title),
          control,
          help && h("small", { class: "help" }, help),
          error,
        );
  return { param, wrapper, error, read, write, picker };
}

function describeBounds(param: ParamSchema): string {
  const { minimum, maximum } = param;
  if (minimum !== undefined && maximum !== undefined) return `${minimum} – ${maximum}`;
  if (minimum !== undefined) return `≥ ${minimum}`;
  if (maximum !== undefined) return `≤ ${maximum}`;
  return "";
}

function buildControl(
  param: ParamSchema,
  context: ParamFormContext,
  id: string,
): { control: HTMLElement; read: () => unknown; write?: (value: unknown) => void; picker?: ClassPicker } {
  const testid = `param-${param.name}`;
  switch (param.type) {
    case "int":
    case "float": {
      const input = h("input", {
        id,
        type: "number",
        name: param.name,
        "data-testid": testid,
        step: param.type === "int" ? 1 : "any",
        min: param.minimum,
        max: param.maximum,
        placeholder: param.nullable ? "auto" : null,
        value: typeof param.default === "number" ? param.default : null,
      });
      const read = () => {
        const text = input.value.trim();
        if (text === "") {
          if (param.nullable) return null;
          throw new InvalidValue("a value is required");
        }
        const value = Number(text);
        if (!Number.isFinite(value)) throw new InvalidValue(`expected a number, got ${JSON.stringify(text)}`);
        if (param.type === "int" && !Number.isInteger(value)) {
          throw new InvalidValue(`expected an integer, got ${text}`);
        }
        // A channel field follows its layer (channel_of); the server checks the same when it is sent.
        const channels = Number(input.dataset.channels ?? NaN);
        if (value >= channels)
          throw new InvalidValue(`the layer has ${channels} channels (0 – ${channels - 1})`);
        return value;
      };
      const write = (value: unknown) => {
        input.value = typeof value === "number" && Number.isFinite(value) ? String(value) : "";
      };
      return { control: input, read, write };
    }
    case "bool": {
      const input = h("input", {
        id,
        type: "checkbox",
        name: param.name,
        "data-testid": testid,
        checked: param.default === true,
      });
      const write = (value: unknown) => {
        input.checked = value === true;
      };
      return { control: input, read: () => input.checked, write };
    }
    case "choice": {
      const choices = param.enum ?? [];
      const select = h(
        "select",
        { id, name: param.name, "data-testid": testid },
        ...choices.map((choice, index) =>
          h("option", { value: index, selected: choice === param.default }, String(choice)),
        ),
      );
      const write = (value: unknown) => {
        const index = choices.indexOf(value);
        if (index >= 0) select.selectedIndex = index;
      };
      return { control: select, read: () => choices[select.selectedIndex] ?? null, write };
    }
    case "layer": {
      const select = h(
        "select",
        { id, name: param.name, "data-testid": testid },
        param.nullable &&
          h("option", { value: "" }, context.defaultLayer ? `auto (${context.defaultLayer})` : "auto"),
        ...context.layers.map((layer) =>
          h(
            "option",
            { value: layer.name, selected: layer.name === param.default },
            `${layer.name}  ·  ${layer.op} ${layer.shape.join("×")}`,
          ),
        ),
      );
      return { control: select, read: readSelect(select, param, "choose a layer") };
    }
    case "class":
      return classControl(param, context.labels, id, testid);
    case "image": {
      const images = context.images ?? [];
      const select = h(
        "select",
        { id, name: param.name, "data-testid": testid },
        param.nullable && h("option", { value: "" }, "none"),
        ...images.map((image) =>
          h("option", { value: image.id, selected: image.id === param.default }, image.title || image.id),
        ),
      );
      const write = (value: unknown) => {
        if (typeof value !== "string") return;
        if (![...select.options].some((option) => option.value === value))
          select.append(h("option", { value }, describeImageId(value)?.title ?? value));
        select.value = value;
      };
      return { control: select, read: readSelect(select, param, "choose an image"), write };
    }
    case "dataset":
      return datasetControl(param, context, id, testid);
    case "models":
      return modelsControl(param, context, id, testid);
    default: {
      const input = h("input", {
        id,
        type: "text",
        name: param.name,
        "data-testid": testid,
        value: typeof param.default === "string" ? param.default : null,
        placeholder: param.nullable ? "auto" : null,
      });
      const read = () => (input.value === "" && param.nullable ? null : input.value);
      return { control: input, read };
    }
  }
}

/** A select's value; its empty option is null for a nullable parameter, else `missing` is the error. */
function readSelect(select: HTMLSelectElement, param: ParamSchema, missing: string): () => string | null {
  return () => {
    if (select.value !== "") return select.value;
    if (param.nullable) return null;
    throw new InvalidValue(missing);
  };
}

/** The model's labels searched by name, and the image's top-5 as one-click choices; empty means null. */
function classControl(
  param: ParamSchema,
  labels: string[],
  id: string,
  testid: string,
): { control: HTMLElement; read: () => unknown; picker: ClassPicker } {
  const picker = new ClassPicker({
    id,
    name: param.name,
    testid,
    labels,
    nullable: param.nullable,
    initial: typeof param.default === "number" ? param.default : null,
  });
  const read = () => {
    try {
      return picker.read();
    } catch (error) {
      if (error instanceof ClassChoiceError) throw new InvalidValue(error.message);
      throw error;
    }
  };
  return { control: picker.element, read, picker };
}

/** A select of the server's data sets, and beside it a zip upload that adds one and selects it. */
function datasetControl(
  param: ParamSchema,
  context: ParamFormContext,
  id: string,
  testid: string,
): { control: HTMLElement; read: () => unknown } {
  const select = h("select", { id, name: param.name, "data-testid": testid });
  const fillOptions = (datasets: DatasetInfo[], chosen: unknown): void => {
    // One that cannot be read is shown with its reason, but cannot be chosen.
    replaceChildren(
      select,
      param.nullable && h("option", { value: "" }, "none"),
      ...datasets.map((dataset) =>
        h(
          "option",
          { value: dataset.id, selected: dataset.id === chosen, disabled: dataset.error !== undefined },
          datasetLabel(dataset),
        ),
      ),
    );
  };
  let datasets = context.datasets ?? [];
  fillOptions(datasets, param.default);
  const read = readSelect(select, param, "choose a data set");
  const { api } = context;
  if (!api) return { control: select, read };

  const input = h("input", {
    type: "file",
    accept: ".zip,application/zip",
    "data-testid": `${testid}-upload`,
    "aria-label": "upload a zip of images as a data set",
  });
  const status = h("small", {
    class: "upload-status",
    "data-testid": `${testid}-upload-status`,
    hidden: true,
  });
  const uploadError = h("span", {
    class: "error field-error",
    role: "alert",
    "data-testid": `${testid}-upload-error`,
    hidden: true,
  });
  const show = (element: HTMLElement, text: string): void => {
    element.textContent = text;
    element.hidden = !text;
  };
  input.addEventListener("change", async () => {
    const file = input.files?.[0];
    if (!file) return;
    show(uploadError, "");
    show(status, "uploading…");
    input.disabled = true;
    try {
      const added = await api.uploadDataset(file, (sent) =>
        show(status, `uploading… ${Math.round(sent * 100)}%`),
      );
      try {
        datasets = await api.datasets();
      } catch {
        // The list could not be fetched again: offer the one just added beside those already known.
        datasets = [...datasets.filter((known) => known.id !== added.id), added];
      }
      fillOptions(datasets, added.id);
      select.dispatchEvent(new Event("change"));
      show(status, `added ${datasetLabel(added)}`);
    } catch (error) {
      // The server names the bad member in its reason ("member '../evil.png': ...").
      const field = error instanceof ApiError ? error.field || "file" : "file";
      const reason = error instanceof ApiError ? error.reason : String(error);
      show(status, "");
      show(uploadError, `${field}: ${reason}`);
    } finally {
      input.disabled = false;
      input.value = "";
    }
  });
  const control = h(
    "div",
    { class: "dataset-picker" },
    select,
    h("label", { class: "upload" }, h("span", {}, "Upload a zip…"), input),
    status,
    uploadError,
  );
  return { control, read };
}

/** "Digits · 1797 images · 10 labels", or the reason a data set cannot be used. */
function datasetLabel(dataset: DatasetInfo): string {
  const title = dataset.title || dataset.id;
  if (dataset.error !== undefined) return `${title} (${dataset.error})`;
  const labels = dataset.labels?.length ? ` · ${dataset.labels.length} labels` : "";
  return `${title} · ${dataset.count ?? 0} images${labels}`;
}

/** A checkbox for each of the server's models and one for "every model" (the parameter's `every`, "*"). */
function modelsControl(
  param: ParamSchema,
  context: ParamFormContext,
  id: string,
  testid: string,
): { control: HTMLElement; read: () => unknown } {
  const every = param.every ?? "*";
  const chosen = new Set(Array.isArray(param.default) ? param.default.map(String) : []);
  const all = h("input", {
    id,
    type: "checkbox",
    "data-testid": `${testid}-every`,
    checked: param.default === every,
  });
  const list = h("div", { class: "model-choices", "data-testid": testid });
  const boxes: HTMLInputElement[] = [];
  const sync = (): void => {
    for (const box of boxes) box.disabled = all.checked || box.dataset.run === "true";
  };
  const fill = (models: ModelInfo[]): void => {
    boxes.length = 0;
    const shown = models.filter((model) => !(param.run_model === "excluded" && model.id === context.modelId));
    replaceChildren(
      list,
      ...shown.map((model) => {
        const own = model.id === context.modelId;
        const box = h("input", {
          type: "checkbox",
          value: model.id,
          "data-run": String(own),
          checked: own || chosen.has(model.id) || param.default === every,
        });
        if (model.error === undefined) boxes.push(box);
        else box.disabled = true;
        const note = own ? " (this run's model)" : model.error !== undefined ? ` (${model.error})` : "";
        return h("label", { class: "check" }, box, `${model.title || model.id} · ${model.id}${note}`);
      }),
    );
    sync();
  };
  all.addEventListener("change", () => {
    for (const box of boxes)
      if (box.dataset.run !== "true") box.checked = all.checked || chosen.has(box.value);
    sync();
  });
  list.addEventListener("change", (event) => {
    const box = event.target as HTMLInputElement;
    if (box.checked) chosen.add(box.value);
    else chosen.delete(box.value);
  });
  if (context.models) fill(context.models);
  else if (context.api) void context.api.models().then(fill, () => fill([]));
  const read = (): unknown => {
    if (all.checked) return every;
    return boxes.filter((box) => box.checked && box.dataset.run !== "true").map((box) => box.value);
  };
  const control = h(
    "div",
    { class: "models-picker" },
    h("label", { class: "check" }, all, "every model"),
    list,
  );
  return { control, read };
}
