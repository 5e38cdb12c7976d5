// Thumbnails of the server's images, and an upload control (multipart `file`).

import { type ApiClient, ApiError, type ImageInfo } from "./api";
import { h, replaceChildren } from "./dom";

export class ImagePicker {
  readonly element: HTMLElement;
  selected: string | null = null;
  private images: ImageInfo[] = [];
  private readonly grid: HTMLElement;
  private readonly uploadError: HTMLElement;
  private readonly fieldError: HTMLElement;
  private readonly input: HTMLInputElement;

  constructor(
    /** Replaced when the element's `server` changes. */
    public api: ApiClient,
    private readonly onSelect: (image: ImageInfo) => void,
  ) {
    this.grid = h("div", { class: "thumbs", role: "listbox", "aria-label": "images" });
    this.input = h("input", {
      type: "file",
      accept: "image/*",
      "data-testid": "upload",
      "aria-label": "upload an image",
    });
    this.input.addEventListener("change", () => void this.upload());
    this.uploadError = h("p", { class: "error", role: "alert", "data-testid": "upload-error", hidden: true });
    this.fieldError = h("p", { class: "error", role: "alert", "data-testid": "image-error", hidden: true });
    this.element = h(
      "div",
      { class: "image-picker", "data-field": "image" },
      this.grid,
      h("label", { class: "upload" }, h("span", {}, "Upload an image"), this.input),
      this.uploadError,
      this.fieldError,
    );
  }

  /** The images offered, samples and uploads. */
  list(): ImageInfo[] {
    return [...this.images];
  }

  setImages(images: ImageInfo[]): void {
    this.images = images;
    this.render();
    if (!this.selected || !images.some((image) => image.id === this.selected)) {
      const first = images[0];
      if (first) this.select(first.id);
    }
  }

  select(id: string): void {
    // A data set's image (a click on the code map, or ?image=dataset:<id>:<index>) or a finished job's result
    // image (its "use as picture", or ?image=job:<id>:<name>) joins the list when chosen.
    this.remember(id);
    const image = this.images.find((candidate) => candidate.id === id);
    if (!image) return;
    this.selected = id;
    for (const thumb of this.grid.querySelectorAll<HTMLElement>("[data-image]")) {
      thumb.setAttribute("aria-selected", String(thumb.dataset.image === id));
    }
    this.showError("");
    this.onSelect(image);
  }

  /** Offers a data set's or a job's image id (see `select`) without choosing it; false for other ids. */
  remember(id: string): boolean {
    const known = describeImageId(id);
    if (!known) return false;
    if (!this.images.some((candidate) => candidate.id === id)) {
      this.images = [...this.images, { ...known, id, url: `/api/images/${encodeURIComponent(id)}` }];
      this.render();
    }
    return true;
  }

  /** An error about the chosen image (field `image` of a job request); "" clears it. */
  showError(message: string): void {
    this.fieldError.textContent = message ? `image: ${message}` : "";
    this.fieldError.hidden = !message;
  }

  private render(): void {
    replaceChildren(
      this.grid,
      ...this.images.map((image) => {
        const thumb = h(
          "button",
          {
            type: "button",
            class: "thumb",
            role: "option",
            "data-testid": "image-thumb",
            "data-image": image.id,
            "aria-selected": String(image.id === this.selected),
            title: image.source ? `${image.title} (${image.source})` : image.title,
          },
          h("img", {
            src: this.api.url(`${image.url}?size=160`),
            alt: "",
            loading: "lazy",
            decoding: "async",
          }),
          h("span", {}, image.title || image.id),
        );
        thumb.addEventListener("click", () => this.select(image.id));
        return thumb;
      }),
    );
  }

  private async upload(): Promise<void> {
    const file = this.input.files?.[0];
    if (!file) return;
    this.uploadError.hidden = true;
    this.input.disabled = true;
    try {
      const image = await this.api.uploadImage(file);
      this.images = [...this.images.filter((known) => known.id !== image.id), image];
      this.render();
      this.select(image.id);
    } catch (error) {
      const field = error instanceof ApiError ? error.field || "file" : "file";
      const reason = error instanceof ApiError ? error.reason : String(error);
      this.uploadError.dataset.field = field;
      this.uploadError.textContent = `${field}: ${reason}`;
      this.uploadError.hidden = false;
    } finally {
      this.input.disabled = false;
      this.input.value = "";
    }
  }
}

/** The title and source of a data set's image id (`dataset:<id>:<index>`) or of a finished job's result image
 * (`job:<job id>:<image name>`: "patch · job 1a2b3c"); null for other ids. */
export function describeImageId(id: string): { title: string; source: string } | null {
  if (id.startsWith("dataset:")) return { title: id.slice("dataset:".length), source: "dataset" };
  const job = /^job:([^:]+):(.+)$/.exec(id);
  if (job) return { title: `${job[2]} · job ${job[1]}`, source: "result" };
  return null;
}
