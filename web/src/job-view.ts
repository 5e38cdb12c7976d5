// <convlens-job-view job="<id>" server="http://host:port" format="jpeg">
//
// The live view of one job, usable on its own in any page: it subscribes to the
// job's Socket.IO room and feeds a JobPanel. Frames are drawn by a FramePainter,
// which acks each one: that ack is what lets the server send the next.

import { io, type Socket } from "socket.io-client";
import {
  ApiClient,
  type FieldError,
  type Job,
  type JobResult,
  type JobState,
  jobImageId,
  normaliseServer,
  serverUrl,
  TERMINAL_STATES,
} from "./api";
import { ATTACK_METHOD, AttackSummary, SCALE_SUFFIX } from "./adversarial-view";
import { APPROXIMATION_METHOD, ApproximationView } from "./approximation-view";
import { AttributionOverlay, isAttributionResult } from "./attribution-view";
import type { ConvlensCodeMap } from "./code-map";
import { CONTEXT_METHOD, ContextView, isContextResult } from "./context-view";
import { formatNumber, h, replaceChildren, sheet } from "./dom";
import { DIGITS_METHOD, DigitsView } from "./digits-view";
import { type DipView, dipView } from "./dip-view";
import { type FrameEvent, FramePainter } from "./frame-painter";
import { GOLDFISH_METHOD, GoldfishView, isGoldfishResult } from "./goldfish-view";
import { type Control, idlePanel, JobPanel } from "./job-panel";
import { isLinearResult, LINEAR_METHOD, LinearDemo } from "./linear-demo";
import { MetricsChart, type MetricsPoint } from "./metrics-chart";
import { parseNpy } from "./npy";
import css from "./styles/job-view.css?inline";
import legendCss from "./styles/legend.css?inline";
import theme from "./styles/theme.css?inline";
import type { PredictionsEvent } from "./top-list";
import { socketAuth } from "./token";

interface Ack {
  ok: boolean;
  error?: string;
  field?: string;
}

/** The `detail` of the `convlens-end` event. */
export interface JobEnd {
  job: string;
  state: JobState;
  result: JobResult | null;
  error: FieldError | null;
}

/** The `detail` of the `convlens-open-method` event: open `method`'s form with `params` preset. */
export interface OpenMethod {
  method: string;
  params: Record<string, unknown>;
}

const ACK_TIMEOUT_MS = 10_000;
const PATCH_METHOD = "adversarial_patch";

/** A finished patch run's patch and "Apply this patch", which asks the page (`convlens-open-method`) for
 * `apply_patch`'s form with this patch, its size and shape. */
function applyPatchOffer(job: string, result: JobResult, server: string): HTMLElement {
  const button = h(
    "button",
    { type: "button", class: "primary", "data-testid": "apply-patch" },
    "Apply this patch to a picture…",
  );
  const detail: OpenMethod = {
    method: "apply_patch",
    params: { patch: jobImageId(job, "patch"), size: result.params.size, shape: result.params.shape },
  };
  button.addEventListener("click", () =>
    button.dispatchEvent(new CustomEvent("convlens-open-method", { detail, bubbles: true, composed: true })),
  );
  const target = typeof result.data.target_label === "string" ? ` (${result.data.target_label})` : "";
  return h(
    "div",
    { class: "patch-offer" },
    h("img", { src: serverUrl(server, result.images.patch ?? ""), alt: "the trained patch" }),
    h(
      "p",
      {},
      `Paste it on any picture and see whether the model now sees the target${target}: `,
      `this opens "Apply a patch" with patch ${jobImageId(job, "patch")}.`,
    ),
    button,
  );
}

let styles: CSSStyleSheet[] | null = null;

function describe(error: FieldError | null | undefined, fallback = ""): string {
  if (!error) return fallback;
  return `${error.field ? `${error.field}: ` : ""}${error.error}`;
}

/**
 * Dispatches, bubbling and composed: `convlens-job` (detail: the Job) on every update from the
 * server, and `convlens-end` (detail: JobEnd) once, when the job is done, failed or stopped.
 */
const DEFAULT_MAX_FPS = 20;

export class ConvlensJobView extends HTMLElement {
  static observedAttributes = ["job", "server", "format", "max-fps"];

  private readonly root: ShadowRoot;
  private socket: Socket | null = null;
  private panel: JobPanel | null = null;
  private painter: FramePainter | null = null;
  private chart: MetricsChart | null = null;
  private jobId = "";
  private job: Job | null = null;
  private ended = false;
  private subscribed = false;
  private overlay: AttributionOverlay | null = null;
  private codeMap: ConvlensCodeMap | null = null;
  private attack: AttackSummary | null = null;
  private approximation: ApproximationView | null = null;
  private digits: DigitsView | null = null;
  private dip: DipView | null = null;
  /** A finished job's own view (the linear demo, the goldfish templates) was made. */
  private finishedView = false;

  constructor() {
    super();
    this.root = this.attachShadow({ mode: "open" });
    styles ??= [sheet(theme), sheet(css), sheet(legendCss)];
    this.root.adoptedStyleSheets = styles;
  }

  /** The server's base URL; "" is the page's own origin. */
  get server(): string {
    return normaliseServer(this.getAttribute("server"));
  }

  /** Frames drawn per second at most (`max-fps`; default 20, 0 for no limit): the server sends no more. */
  get maxFps(): number {
    const value = Number(this.getAttribute("max-fps") ?? DEFAULT_MAX_FPS);
    return Number.isFinite(value) && value >= 0 ? value : DEFAULT_MAX_FPS;
  }

  /** The Job as last reported by the server, or null. */
  get current(): Job | null {
    return this.job;
  }

  connectedCallback(): void {
    this.open();
  }

  disconnectedCallback(): void {
    this.close();
  }

  attributeChangedCallback(_name: string, oldValue: string | null, newValue: string | null): void {
    if (oldValue !== newValue && this.isConnected) this.open();
  }

  private open(): void {
    this.close();
    this.jobId = (this.getAttribute("job") ?? "").trim();
    this.job = null;
    this.ended = false;
    this.subscribed = false;
    this.overlay = null;
    this.codeMap = null;
    this.attack = null;
    this.approximation = null;
    this.digits = null;
    this.dip = null;
    this.finishedView = false;
    if (!this.jobId) {
      replaceChildren(this.root, idlePanel());
      return;
    }
    const panel = new JobPanel(this.jobId, this.server, (action) => this.control(action));
    this.panel = panel;
    replaceChildren(this.root, panel.element);
    this.painter = new FramePainter(
      {
        canvasFor: (label) => panel.canvasFor(label),
        ack: (seq) => this.socket?.emit("frame_ack", { job: this.jobId, seq }),
        drawn: () => panel.frameDrawn(),
        failed: (frame, error) =>
          panel.addLog("error", `frame ${frame.seq} could not be drawn: ${String(error)}`),
      },
      { maxFps: this.maxFps },
    );
    this.chart = new MetricsChart(panel.chartCanvas, (names) => panel.metricsShown(names));
    this.connect(panel);
  }

  private close(): void {
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      if (socket.connected) socket.emit("unsubscribe", { job: this.jobId });
      socket.removeAllListeners();
      socket.disconnect();
    }
    this.painter?.dispose();
    this.painter = null;
    this.chart?.dispose();
    this.chart = null;
    this.approximation?.dispose();
    this.digits?.dispose();
    this.dip?.dispose();
    this.panel = null;
  }

  private connect(panel: JobPanel): void {
    const options = { forceNew: true, reconnectionDelayMax: 5000, auth: socketAuth };
    const socket = this.server ? io(this.server, options) : io(options);
    this.socket = socket;
    const job = this.jobId;
    const mine = (payload: { job?: string } | null | undefined) => payload?.job === job;

    socket.on("connect", () => {
      panel.showMessage("");
      this.subscribe(socket, panel);
    });
    socket.on("connect_error", (error: Error) => {
      if (!this.subscribed) panel.showMessage(`cannot reach the server: ${error.message}`);
    });
    socket.on("disconnect", (reason: string) => {
      if (!this.ended && reason !== "io client disconnect")
        panel.showMessage("connection lost; reconnecting…");
    });

    socket.on("job", (payload: Job) => {
      if (payload?.id === job) this.applyJob(panel, payload);
    });
    socket.on("frame", (payload: FrameEvent) => {
      if (mine(payload)) this.painter?.push(payload);
    });
    // An embedding's points, x0, y0, x1, y1, … as little-endian float32 (the newest; the server paces them).
    socket.on(
      "points",
      (payload: {
        job: string;
        step: number | null;
        label: string;
        n: number;
        data: ArrayBuffer | ArrayBufferView;
      }) => {
        if (!mine(payload)) return;
        const data = payload.data;
        const bytes =
          data instanceof ArrayBuffer
            ? data
            : data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
        const positions = new Float32Array(bytes as ArrayBuffer, 0, 2 * payload.n);
        if (this.approximation) this.approximation.setPoints(payload.label, positions, payload.step);
        else this.showCodeMap(panel)?.setPositions(positions, payload.step);
      },
    );
    socket.on("progress", (payload: { job: string; step: number; total: number; time?: number }) => {
      if (mine(payload)) panel.setProgress(payload.step, payload.total, payload.time);
    });
    // A send carries every point since the last one: the server paces its messages (STREAM_HZ).
    socket.on("metrics", (payload: { job: string; points?: MetricsPoint[] } & MetricsPoint) => {
      if (!mine(payload)) return;
      const points = payload.points ?? [payload];
      for (const point of points) this.chart?.add({ step: point.step, values: point.values ?? {} });
      this.digits?.add(points);
      this.dip?.add(points);
      this.newestMetrics(panel, points.at(-1)?.values ?? {});
    });
    socket.on("metrics_history", (payload: { job: string; history: MetricsPoint[] }) => {
      if (!mine(payload)) return;
      this.chart?.setHistory(payload.history ?? []);
      this.digits?.setHistory(payload.history ?? []);
      this.dip?.setHistory(payload.history ?? []);
      this.newestMetrics(panel, payload.history?.at(-1)?.values ?? {});
    });
    // The top classes of each panel of the frames (the newest; the server paces them like frames).
    socket.on("predictions", (payload: PredictionsEvent) => {
      if (!mine(payload) || typeof payload.tops !== "object" || payload.tops === null) return;
      panel.setTops(payload.tops, payload.step);
      this.attack?.predictions(payload.tops, payload.step);
    });
    socket.on("log", (payload: { job: string; level: string; message: string }) => {
      if (mine(payload)) panel.addLog(payload.level, payload.message);
    });
    socket.on("done", (payload: { job: string; result: JobResult | null }) => {
      if (mine(payload)) this.end(panel, "done", payload.result ?? this.job?.result ?? null, null);
    });
    socket.on("failed", (payload: { job: string; error: FieldError | null }) => {
      if (mine(payload)) this.end(panel, "failed", null, payload.error ?? this.job?.error ?? null);
    });
    socket.on("stopped", (payload: { job: string }) => {
      if (mine(payload)) this.end(panel, "stopped", null, null);
    });
  }

  private subscribe(socket: Socket, panel: JobPanel): void {
    // The server replays the job's recent log on every subscribe, reconnections included.
    panel.clearLog();
    const request: { job: string; format?: string } = { job: this.jobId };
    const format = this.getAttribute("format");
    if (format) request.format = format;
    socket.timeout(ACK_TIMEOUT_MS).emit("subscribe", request, (timeout: Error | null, ack?: Ack) => {
      if (socket !== this.socket) return;
      if (timeout) {
        panel.showMessage("the server did not answer the subscription");
      } else if (ack && !ack.ok) {
        const reason = describe({ error: ack.error ?? "subscription refused", field: ack.field ?? "" });
        panel.setState("error", reason);
        panel.showMessage(reason);
      } else {
        this.subscribed = true;
      }
    });
  }

  private control(action: Control): void {
    const socket = this.socket;
    const panel = this.panel;
    if (!socket || !panel) return;
    socket.timeout(ACK_TIMEOUT_MS).emit(action, { job: this.jobId }, (timeout: Error | null, ack?: Ack) => {
      if (timeout) panel.showMessage(`${action}: the server did not answer`);
      else if (ack && !ack.ok)
        panel.showMessage(`${action}: ${describe({ error: ack.error ?? "refused", field: "" })}`);
      panel.enableControls();
    });
  }

  /** The job's code map, made when it is first needed (a code_map job, or any job that sends points). */
  private showCodeMap(panel: JobPanel): ConvlensCodeMap | null {
    if (this.codeMap) return this.codeMap;
    const dataset = this.job?.params?.dataset;
    if (typeof dataset !== "string") return null;
    const map = document.createElement("convlens-code-map");
    map.setAttribute("dataset", dataset);
    if (this.server) map.setAttribute("server", this.server);
    this.codeMap = map;
    panel.showCodeMap(map);
    return map;
  }

  /** A finished code map's final layout (positions.npy) and, when snapped, its grid (grid_positions.npy). */
  private async loadCodeMap(panel: JobPanel, result: JobResult): Promise<void> {
    const urls = (result as { array_urls?: Record<string, string> }).array_urls ?? {};
    const map = this.showCodeMap(panel);
    if (!map || !urls.positions) return;
    const read = async (url: string, accept?: string[]) => {
      const answer = await fetch(`${this.server}${url}`);
      if (!answer.ok) throw new Error(`${url}: HTTP ${answer.status}`);
      return parseNpy(await answer.arrayBuffer(), accept).data;
    };
    try {
      map.setPositions(await read(urls.positions));
      if (urls.grid_positions) map.setGrid(await read(urls.grid_positions, ["<f4", "<i4"]));
      map.dataset.final = "loaded";
    } catch (error) {
      panel.addLog("error", `the code map could not be loaded: ${String(error)}`);
    }
  }

  /** What the newest metrics say beside the chart: a panel's amplification ("<panel> scale (×)"), an
   * attack's norms. */
  private newestMetrics(panel: JobPanel, values: Record<string, number>): void {
    for (const [name, value] of Object.entries(values)) {
      if (name.endsWith(SCALE_SUFFIX) && Number.isFinite(value))
        panel.setPanelNote(name.slice(0, -SCALE_SUFFIX.length), `×${formatNumber(value)} amplified`);
    }
    this.attack?.metrics(values);
  }

  private applyJob(panel: JobPanel, job: Job): void {
    this.job = job;
    panel.setJob(job);
    if (job.method === "code_map") this.showCodeMap(panel);
    if (job.method === APPROXIMATION_METHOD && !this.approximation) {
      // A drawn target's run replaces this one in the view.
      this.approximation = new ApproximationView(new ApiClient(this.server), job, (next) =>
        this.setAttribute("job", next.id),
      );
      panel.showMethodView("Universal approximation", this.approximation.element);
      panel.hideFrames(); // its curves are charts, not frames
    }
    if (job.method === DIGITS_METHOD && !this.digits) {
      this.digits = new DigitsView(new ApiClient(this.server), job);
      panel.showMethodView("Digits, trained live", this.digits.element);
    }
    if (!this.dip) {
      this.dip = dipView(new ApiClient(this.server), job);
      if (this.dip) panel.showMethodView(this.dip.title, this.dip.element);
    }
    if (job.method === ATTACK_METHOD && !this.attack) {
      this.attack = new AttackSummary();
      panel.showMethodView("Attack", this.attack.element);
    }
    this.dispatchEvent(new CustomEvent("convlens-job", { detail: job, bubbles: true, composed: true }));
    if (TERMINAL_STATES.has(job.state)) this.end(panel, job.state, job.result, job.error);
    else panel.setState(job.state);
  }

  /** A finished job's own view: the attack's exact flip step and transfer table, the linear demo, the
   * goldfish templates. */
  private showFinishedView(panel: JobPanel, result: JobResult | null): void {
    this.attack?.result(result);
    this.digits?.finished(result);
    if (this.finishedView || !result) return;
    if (result.method === LINEAR_METHOD && isLinearResult(result)) {
      this.finishedView = true;
      panel.showMethodView("The linear explanation, live", new LinearDemo(result).element);
    } else if (result.method === PATCH_METHOD && typeof result.images?.patch === "string") {
      this.finishedView = true;
      panel.showMethodView("The trained patch", applyPatchOffer(this.jobId, result, this.server));
    } else if (result.method === GOLDFISH_METHOD && isGoldfishResult(result)) {
      this.finishedView = true;
      const view = new GoldfishView(new ApiClient(this.server), result);
      panel.showMethodView("Weight templates", view.element);
      void view.load();
    } else if (result.method === CONTEXT_METHOD && isContextResult(result)) {
      this.finishedView = true;
      panel.showMethodView("The subject on other backgrounds", new ContextView(result).element);
    }
  }

  private end(panel: JobPanel, state: JobState, result: JobResult | null, error: FieldError | null): void {
    if (this.job) this.job = { ...this.job, state, result: result ?? this.job.result, error };
    panel.setState(state, describe(error));
    panel.ended(state, result);
    this.dip?.ended(state, result);
    if (state === "done" && result && this.codeMap && !this.codeMap.dataset.final) {
      this.codeMap.dataset.final = "loading";
      void this.loadCodeMap(panel, result);
    }
    if (state === "done") this.showFinishedView(panel, result);
    if (state === "done" && !this.overlay && isAttributionResult(result)) {
      this.overlay = new AttributionOverlay(new ApiClient(this.server), result);
      panel.showAttribution(this.overlay.element);
      void this.overlay.load();
    }
    if (this.ended) return;
    this.ended = true;
    const detail: JobEnd = { job: this.jobId, state, result, error };
    this.dispatchEvent(new CustomEvent("convlens-end", { detail, bubbles: true, composed: true }));
  }
}

declare global {
  interface HTMLElementTagNameMap {
    "convlens-job-view": ConvlensJobView;
  }
  interface HTMLElementEventMap {
    "convlens-job": CustomEvent<Job>;
    "convlens-end": CustomEvent<JobEnd>;
    "convlens-open-method": CustomEvent<OpenMethod>;
  }
}
