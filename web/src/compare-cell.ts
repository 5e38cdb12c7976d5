// One cell of the comparison grid: a method on a model. While the job runs it shows the method's own
// frames; when it is done it draws attribution.npy normalised the comparison's one way (heatmap.ts),
// over the picture at the grid's opacity.

import type { ApiClient, FieldError, Job, JobResult } from "./api";
import { formatNumber, h, replaceChildren } from "./dom";
import { FramePainter, type FrameEvent } from "./frame-painter";
import { blend, type ColourTable, colourise, loadPixels, normalisePositive, paint } from "./heatmap";
import type { JobHandlers } from "./job-feed";
import { parseNpy } from "./npy";

export type CellState =
  "unavailable" | "queued" | "running" | "paused" | "done" | "failed" | "stopped" | "error";

export const SETTLED: ReadonlySet<CellState> = new Set(["unavailable", "done", "failed", "stopped", "error"]);

export class CompareCell {
  readonly element: HTMLElement;
  jobId = "";
  state: CellState = "queued";
  private readonly canvas: HTMLCanvasElement;
  private readonly status: HTMLElement;
  private readonly progress: HTMLProgressElement;
  private readonly caption: HTMLElement;
  private readonly links: HTMLElement;
  private painter: FramePainter | null = null;
  private picture: ImageData | null = null;
  private colours: Uint8ClampedArray | null = null;
  private finishing = false;

  constructor(
    readonly method: string,
    readonly model: string,
    private readonly api: ApiClient,
    private readonly table: () => Promise<ColourTable>,
    private readonly onSettled: () => void,
  ) {
    this.canvas = h("canvas", { "data-testid": "cell-canvas", width: 224, height: 224 });
    this.status = h("span", { class: "cell-status", "data-testid": "cell-status", role: "status" }, "queued");
    this.progress = h("progress", { max: 1, value: 0, "aria-label": `${method} on ${model}: progress` });
    this.caption = h("p", { class: "cell-caption", "data-testid": "cell-caption" });
    this.links = h("span", { class: "cell-links" });
    this.element = h(
      "figure",
      { class: "cell", "data-testid": "cell", "data-method": method, "data-model": model },
      this.canvas,
      h("div", { class: "cell-bar" }, this.status, this.progress),
      this.caption,
      this.links,
    );
    this.setState("queued");
  }

  /** The method cannot run on this model (or its job was refused): say why instead of a picture. */
  unavailable(reason: string, state: CellState = "unavailable"): void {
    this.canvas.hidden = true;
    this.progress.hidden = true;
    this.caption.textContent = reason;
    this.caption.classList.add("reason");
    this.setState(state, state === "unavailable" ? "unavailable" : `${state}`);
  }

  /** The handlers that feed this cell from a JobFeed. */
  handlers(ack: (seq: number) => void, opacity: () => number): JobHandlers {
    this.painter = new FramePainter({
      canvasFor: () => this.canvas,
      ack,
      drawn: () => (this.canvas.dataset.drawn = "frame"),
    });
    return {
      job: (job: Job) => {
        if (job.progress) this.setProgress(job.progress.step, job.progress.total);
        if (job.state === "done") void this.finish(job.result, opacity());
        else if (job.state === "failed") this.failed(job.error);
        else if (job.state === "stopped") this.setState("stopped");
        else this.setState(job.state);
      },
      frame: (frame: FrameEvent) => {
        if (this.painter) this.painter.push(frame);
        else ack(frame.seq);
      },
      progress: (step, total) => this.setProgress(step, total),
      done: (result) => void this.finish(result, opacity()),
      failed: (error) => this.failed(error),
      stopped: () => this.setState("stopped"),
      problem: (message) => {
        if (!SETTLED.has(this.state)) this.status.textContent = message;
      },
    };
  }

  /** Re-blend the finished map over the picture. */
  setOpacity(opacity: number): void {
    const { picture, colours } = this;
    if (!picture || !colours) return;
    paint(this.canvas, blend(picture.data, colours, opacity, picture.width, picture.height));
    this.canvas.dataset.opacity = String(opacity);
  }

  dispose(): void {
    this.painter?.dispose();
    this.painter = null;
  }

  private setProgress(step: number, total: number): void {
    this.progress.max = Math.max(total, 1);
    this.progress.value = Math.min(Math.max(step, 0), this.progress.max);
  }

  private failed(error: FieldError | null): void {
    this.dispose();
    const reason = error ? `${error.field ? `${error.field}: ` : ""}${error.error}` : "failed";
    this.caption.textContent = reason;
    this.caption.classList.add("reason");
    this.setState("failed");
  }

  private async finish(result: JobResult | null, opacity: number): Promise<void> {
    if (this.finishing) return;
    this.finishing = true;
    this.dispose();
    this.progress.value = this.progress.max;
    this.status.textContent = "normalising…";
    const url = result?.array_urls?.attribution;
    try {
      if (!result || !url) throw new Error("the result has no attribution array");
      const array = parseNpy(await this.api.bytes(url, "attribution"));
      if (array.shape.length !== 2) {
        throw new Error(`attribution.npy has shape (${array.shape.join(", ")}), expected HxW`);
      }
      const [height, width] = array.shape as [number, number];
      const normalised = normalisePositive(array.data);
      const table = await this.table();
      this.colours = colourise(normalised.values, table);
      this.picture = await loadPixels(this.api.imageForModel(result.image, this.model), width, height);
      this.setOpacity(opacity);
      this.canvas.dataset.drawn = "normalised";
      this.element.dataset.scale = String(normalised.scale);
      this.element.dataset.arrayUrl = this.api.url(url);
      const target = result.data?.target;
      const label = result.data?.label;
      this.caption.textContent =
        `class ${String(target)}${typeof label === "string" ? ` “${label}”` : ""} · 1 = ` +
        (normalised.scale > 0 ? formatNumber(normalised.scale) : "— (no positive value)");
      this.caption.title = "the positive part's 99th percentile, in the method's own units";
      replaceChildren(
        this.links,
        h("a", { href: this.api.url(url), target: "_blank" }, "attribution.npy"),
        h(
          "a",
          { href: this.api.url(`/embed.html?job=${encodeURIComponent(this.jobId)}`), target: "_blank" },
          "job",
        ),
      );
      this.setState("done");
    } catch (error) {
      this.caption.textContent = `cannot draw the map: ${error instanceof Error ? error.message : String(error)}`;
      this.caption.classList.add("reason");
      this.setState("error");
    }
  }

  private setState(state: CellState, text: string = state): void {
    const settledBefore = SETTLED.has(this.state);
    this.state = state;
    this.element.dataset.state = state;
    this.status.textContent = text;
    if (SETTLED.has(state) && !settledBefore) this.onSettled();
  }
}
