// <convlens-gallery server>: the client's ended runs as a grid of cards (GET /api/gallery), each with its
// thumbnail, what it ran (method, model, main parameters, seed), how and when it ended, a permalink that
// reopens its view on the main page, "Run again" (same request and seed; says whether the result's hash is
// the same) and "Delete". A run whose files were deleted by hand is shown as missing, not hidden.

import { ApiClient, ApiError, type GalleryRun, type Job, TERMINAL_STATES } from "./api";
import { h, replaceChildren, sheet } from "./dom";
import css from "./styles/gallery.css?inline";
import pageCss from "./styles/page.css?inline";
import theme from "./styles/theme.css?inline";

const PAGE_SIZE = 24;
const SHOWN_PARAMS = 4;
const POLL_MS = 400;

let styles: CSSStyleSheet[] | null = null;

export class ConvlensGallery extends HTMLElement {
  static observedAttributes = ["server"];

  private readonly root: ShadowRoot;
  private api = new ApiClient();
  private next: string | null = null;
  private started = false;
  private readonly grid: HTMLElement;
  private readonly more: HTMLButtonElement;
  private readonly status: HTMLElement;
  private readonly banner: HTMLElement;

  constructor() {
    super();
    this.root = this.attachShadow({ mode: "open" });
    styles ??= [sheet(theme), sheet(pageCss), sheet(css)];
    this.root.adoptedStyleSheets = styles;
    this.grid = h("div", { class: "grid", "data-testid": "gallery-grid" });
    this.more = h("button", { type: "button", "data-testid": "more", hidden: true }, "More runs");
    this.more.addEventListener("click", () => void this.load());
    this.status = h("p", { class: "muted", "data-testid": "gallery-status" });
    this.banner = h("p", { class: "error banner", role: "alert", hidden: true });
    replaceChildren(
      this.root,
      h(
        "div",
        { class: "page" },
        h(
          "header",
          { class: "top" },
          h("h1", {}, "convlens"),
          h("span", { class: "tagline" }, "gallery of runs"),
          h("a", { class: "nav", href: this.api.url("/") }, "← Run a method"),
        ),
        this.banner,
        this.status,
        this.grid,
        h("div", { class: "more-row" }, this.more),
      ),
    );
  }

  attributeChangedCallback(): void {
    this.api = new ApiClient(this.getAttribute("server") ?? "");
    if (this.started) void this.reload();
  }

  connectedCallback(): void {
    if (this.started) return;
    this.started = true;
    void this.reload();
  }

  private async reload(): Promise<void> {
    this.next = null;
    this.grid.replaceChildren();
    await this.load();
  }

  private async load(): Promise<void> {
    this.more.disabled = true;
    try {
      const page = await this.api.gallery(PAGE_SIZE, this.next);
      this.grid.append(...page.runs.map((run) => this.card(run)));
      this.next = page.next;
      this.banner.hidden = true;
    } catch (error) {
      this.banner.textContent = `Could not list the runs: ${(error as Error).message}`;
      this.banner.hidden = false;
    }
    this.more.hidden = this.next === null;
    this.more.disabled = false;
    this.status.textContent = this.grid.childElementCount ? "" : "No finished runs yet.";
  }

  private card(run: GalleryRun): HTMLElement {
    const permalink = this.api.url(run.permalink);
    const again = h("button", { type: "button", "data-testid": "again" }, "Run again");
    const remove = h("button", { type: "button", class: "danger", "data-testid": "delete" }, "Delete");
    const outcome = h("p", { class: "outcome", "data-testid": "outcome", role: "status" });
    const card = h(
      "article",
      { class: `run${run.missing.length ? " missing" : ""}`, "data-job": run.id, "data-testid": "run" },
      h("a", { class: "thumb-link", href: permalink, "data-testid": "permalink" }, this.picture(run)),
      h(
        "div",
        { class: "facts" },
        h("strong", { class: "method" }, run.method),
        h("span", { class: `badge state-${run.state}` }, run.state),
        h("div", { class: "model", title: run.model }, run.model),
        h("div", { class: "params" }, mainParams(run.params)),
        h("div", { class: "seed" }, `seed ${run.seed}`),
        h("time", { datetime: isoDate(run.finished ?? run.created) }, shortDate(run.finished ?? run.created)),
        run.same_result === null ? null : sameness(run.same_result),
      ),
      h("div", { class: "actions" }, again, remove),
      outcome,
    );
    again.addEventListener("click", () => void this.runAgain(run, again, outcome));
    remove.addEventListener("click", () => void this.deleteRun(run, card, outcome));
    return card;
  }

  private picture(run: GalleryRun): HTMLElement {
    if (run.missing.length) return placeholder(`files missing: ${run.missing.join(", ")}`);
    if (!run.thumbnail) return placeholder(run.state === "done" ? "no picture" : run.error || run.state);
    const image = h("img", {
      class: "thumb",
      src: this.api.url(run.thumbnail),
      alt: `${run.method} on ${run.image}`,
      "data-testid": "thumbnail",
    });
    // Damaged by hand since it was listed: the server answers 410; show the placeholder instead.
    image.addEventListener("error", () => image.replaceWith(placeholder("picture missing or damaged")));
    return image;
  }

  private async runAgain(run: GalleryRun, button: HTMLButtonElement, outcome: HTMLElement): Promise<void> {
    button.disabled = true;
    outcome.className = "outcome";
    outcome.textContent = "starting…";
    try {
      let job = await this.api.runAgain(run.id);
      while (!TERMINAL_STATES.has(job.state)) {
        outcome.textContent = progressText(job);
        await new Promise((resolve) => window.setTimeout(resolve, POLL_MS));
        job = await this.api.job(job.id);
      }
      outcome.dataset.job = job.id;
      if (job.state !== "done") {
        outcome.textContent = `run again ${job.state}${job.error ? `: ${job.error.error}` : ""}`;
        outcome.classList.add("different");
      } else if (job.same_result === true) {
        outcome.textContent = "same result ✓";
        outcome.classList.add("same");
      } else {
        outcome.textContent = job.same_result === false ? "different result" : "no result to compare with";
        outcome.classList.add("different");
      }
      outcome.dataset.same = String(job.same_result);
    } catch (error) {
      outcome.textContent = describe(error);
      outcome.classList.add("different");
    } finally {
      button.disabled = false;
    }
  }

  private async deleteRun(run: GalleryRun, card: HTMLElement, outcome: HTMLElement): Promise<void> {
    if (!window.confirm(`Delete the run ${run.method} (${run.id}) and its files?`)) return;
    try {
      await this.api.deleteJob(run.id);
      card.remove();
      if (!this.grid.childElementCount) this.status.textContent = "No finished runs yet.";
    } catch (error) {
      outcome.textContent = describe(error);
      outcome.className = "outcome different";
    }
  }
}

function placeholder(text: string): HTMLElement {
  return h("div", { class: "thumb placeholder", "data-testid": "placeholder" }, text);
}

function sameness(same: boolean): HTMLElement {
  return h(
    "span",
    { class: `outcome ${same ? "same" : "different"}` },
    same ? "same result ✓" : "different result",
  );
}

/** The first few parameters as `name=value`, objects and long values shortened. */
function mainParams(params: Record<string, unknown>): string {
  return Object.entries(params)
    .filter(([, value]) => value !== null && value !== undefined)
    .slice(0, SHOWN_PARAMS)
    .map(([name, value]) => {
      const text = typeof value === "object" ? JSON.stringify(value) : String(value);
      return `${name}=${text.length > 16 ? `${text.slice(0, 15)}…` : text}`;
    })
    .join(" · ");
}

function progressText(job: Job): string {
  if (job.progress && job.progress.total > 0)
    return `${job.state} ${job.progress.step}/${job.progress.total}`;
  return `${job.state}…`;
}

function describe(error: unknown): string {
  return error instanceof ApiError ? `${error.field || "error"}: ${error.reason}` : String(error);
}

function isoDate(seconds: number): string {
  return new Date(seconds * 1000).toISOString();
}

function shortDate(seconds: number): string {
  return new Date(seconds * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

declare global {
  interface HTMLElementTagNameMap {
    "convlens-gallery": ConvlensGallery;
  }
}
