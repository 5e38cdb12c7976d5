// The shapes of the README's API section, and a small REST client bound to one server.

import { authHeaders, fetchWithToken, storedToken } from "./token";

export interface ModelInfo {
  id: string;
  title: string;
  format: string;
  file: string;
  input_size: [number, number];
  num_classes: number;
  capabilities: string[];
  default_layer: string | null;
  /** The server's default model. */
  default?: boolean;
  /** Set instead of the rest when the file failed to load. */
  error?: string;
}

export interface LayerInfo {
  name: string;
  op: string;
  shape: number[];
}

export interface ModelDetail extends ModelInfo {
  layers: LayerInfo[];
  sha256: string;
}

export type ParamType =
  "int" | "float" | "bool" | "choice" | "string" | "layer" | "class" | "image" | "dataset" | "models";

export interface ParamSchema {
  name: string;
  type: ParamType;
  title: string;
  description: string;
  default: unknown;
  nullable: boolean;
  minimum?: number;
  maximum?: number;
  enum?: unknown[];
  /** An int indexing the channels of the layer chosen in this parameter. */
  channel_of?: string;
  /** `models`: where the run's own model goes, before the chosen ones or never among them. */
  run_model?: "first" | "excluded";
  /** `models`: the value meaning every model the server has ("*"). */
  every?: string;
}

export interface MethodInfo {
  name: string;
  title: string;
  topic: string;
  description: string;
  reference: string;
  needs: string[];
  params: ParamSchema[];
  plugin: string;
  /** Promises about the result, e.g. ATTRIBUTION_MAP. */
  tags?: string[];
  unavailable?: string | null;
}

/** Tag of a method whose result has `arrays.attribution` (HxW relevance per input pixel) and a `target` param. */
export const ATTRIBUTION_MAP = "attribution-map";

export interface Colormap {
  name: string;
  /** 256 [r, g, b] in 0-255, from value 0 to value 1. */
  colors: [number, number, number][];
}

export interface ImageInfo {
  id: string;
  title: string;
  source?: string;
  url: string;
  width?: number;
  height?: number;
}

/** A data set, as `GET /api/datasets` lists it; `error` instead of the rest for one that cannot be read. */
export interface DatasetInfo {
  id: string;
  title: string;
  source: string;
  count?: number;
  labels?: string[];
  error?: string;
}

export type JobState = "queued" | "running" | "paused" | "done" | "failed" | "stopped";

export interface FieldError {
  error: string;
  field: string;
}

export interface Prediction {
  index: number;
  label: string;
  probability: number;
}

/** The image id of a finished job's result image, usable wherever an image id is (README, API). */
export function jobImageId(job: string, name: string): string {
  return `job:${job}:${name}`;
}

export interface JobResult {
  method: string;
  model: { id: string; sha256: string; format: string };
  image: string;
  params: Record<string, unknown>;
  seed: number;
  predictions: Prediction[];
  metrics: Record<string, number>;
  data: Record<string, unknown>;
  images: Record<string, string>;
  /** The URL of an animated GIF of the run's frames, when there is one. */
  animation?: string | null;
  /** Raw result arrays (NumPy .npy) by name → URL, e.g. an attribution map before normalisation. */
  array_urls?: Record<string, string>;
  /** The sha256 of what is reproducible of the result (README: Gallery of runs). */
  sha256?: string;
}

export interface Job {
  id: string;
  method: string;
  model: string;
  image: string;
  params: Record<string, unknown>;
  seed: number;
  state: JobState;
  /** `time`: the server's clock (Unix seconds) when the step was done. */
  progress: { step: number; total: number; time?: number } | null;
  metrics: Record<string, number>;
  error: FieldError | null;
  created: string | number | null;
  started: string | number | null;
  finished: string | number | null;
  frames: number;
  predictions: Prediction[];
  result: JobResult | null;
  /** The job this one ran again, and whether their results' hashes are equal (null: not known). */
  again_of?: string | null;
  same_result?: boolean | null;
}

/** A job as `GET /api/jobs` lists it; the whole job is `GET /api/jobs/<id>`. */
export interface JobSummary {
  id: string;
  method: string;
  model: string;
  image: string;
  state: JobState;
  created: number;
  started: number | null;
  finished: number | null;
  /** The reason a failed job gave. */
  error: string | null;
  /** A result image's URL, if the run made one. */
  thumbnail: string | null;
  animation: string | null;
  /** `"deleted"` when the run's results folder was removed by hand. */
  files: string | null;
}

/** A page of `GET /api/jobs`, newest first; `next` is the `?before=` of the page after, `null` on the last. */
export interface JobPage {
  jobs: JobSummary[];
  next: string | null;
  total: number;
}

/** An ended run as `GET /api/gallery` lists it. */
export interface GalleryRun {
  id: string;
  method: string;
  model: string;
  image: string;
  params: Record<string, unknown>;
  seed: number;
  state: JobState;
  created: number;
  finished: number | null;
  error: string | null;
  /** The sha256 of the run's reproducible result; null for a run that made none. */
  sha256: string | null;
  /** The run this one ran again, and whether its hash equalled that run's. */
  again_of: string | null;
  same_result: boolean | null;
  /** `GET /api/jobs/<id>/thumbnail.png`, or null when the run made no picture. */
  thumbnail: string | null;
  /** The main page's address that reopens the run's view (`/#job=<id>`). */
  permalink: string;
  /** The files of its results folder deleted by hand ("result.json" first when the folder went). */
  missing: string[];
}

/** A page of `GET /api/gallery`, newest first; `next` is the `?before=` of the page after. */
export interface GalleryPage {
  runs: GalleryRun[];
  next: string | null;
}

export interface JobRequest {
  method: string;
  model: string;
  image: string;
  params: Record<string, unknown>;
  seed?: number;
}

export const TERMINAL_STATES: ReadonlySet<JobState> = new Set(["done", "failed", "stopped"]);

/** A 4xx/5xx answer: `field` names the offending input when the server said which. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    readonly field: string,
  ) {
    super(field ? `${field}: ${reason}` : reason);
    this.name = "ApiError";
  }
}

/** `server` without a trailing slash; "" means the page's own origin. */
export function normaliseServer(server: string | null | undefined): string {
  return (server ?? "").trim().replace(/\/+$/, "");
}

/** A server path ("/api/...") made absolute against `server`; absolute URLs pass through. */
export function serverUrl(server: string, path: string): string {
  if (/^[a-z][a-z0-9+.-]*:/i.test(path) || path.startsWith("//")) return path;
  const url = `${server}${path.startsWith("/") ? "" : "/"}${path}`;
  // Another server's <img> and download links cannot carry the token: its cookie is set only for its own
  // pages (a notebook's widget, a lab's dashboard). The server reads ?token= as it reads the header.
  const token = server ? storedToken() : null;
  if (!token) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

async function errorFrom(response: Response, fallbackField: string): Promise<ApiError> {
  let reason = `${response.status} ${response.statusText}`.trim();
  let field = fallbackField;
  try {
    const body = (await response.json()) as Partial<FieldError>;
    if (typeof body.error === "string") reason = body.error;
    if (typeof body.field === "string") field = body.field;
  } catch {
    // Not JSON (a proxy's or the framework's own error page): keep the status line.
  }
  return new ApiError(response.status, reason, field);
}

export class ApiClient {
  readonly server: string;

  constructor(server = "") {
    this.server = normaliseServer(server);
  }

  url(path: string): string {
    return serverUrl(this.server, path);
  }

  async get<T>(path: string): Promise<T> {
    const response = await fetchWithToken(this.url(path), { headers: { Accept: "application/json" } });
    if (!response.ok) throw await errorFrom(response, "");
    return (await response.json()) as T;
  }

  async post<T>(path: string, body: unknown): Promise<T> {
    const response = await fetchWithToken(this.url(path), {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) throw await errorFrom(response, "");
    return (await response.json()) as T;
  }

  models(): Promise<ModelInfo[]> {
    return this.get("/api/models");
  }

  model(id: string): Promise<ModelDetail> {
    return this.get(`/api/models/${encodeURIComponent(id)}`);
  }

  labels(id: string): Promise<string[]> {
    return this.get(`/api/models/${encodeURIComponent(id)}/labels`);
  }

  methods(model: string): Promise<MethodInfo[]> {
    return this.get(`/api/methods?model=${encodeURIComponent(model)}`);
  }

  images(): Promise<ImageInfo[]> {
    return this.get("/api/images");
  }

  datasets(): Promise<DatasetInfo[]> {
    return this.get("/api/datasets");
  }

  /** The top-`k` classes of `image` as `model` sees it (resized to its input). */
  predict(model: string, image: string, k = 5): Promise<Prediction[]> {
    const query = new URLSearchParams({ image, k: String(k) });
    return this.get(`/api/models/${encodeURIComponent(model)}/predict?${query}`);
  }

  colormap(name: string): Promise<Colormap> {
    return this.get(`/api/colormaps/${encodeURIComponent(name)}`);
  }

  /** The URL of `image` resized to `model`'s input exactly as a job sees it. */
  imageForModel(image: string, model: string): string {
    return this.url(`/api/images/${encodeURIComponent(image)}?model=${encodeURIComponent(model)}`);
  }

  jobs(limit = 50, before?: string): Promise<JobPage> {
    const query = new URLSearchParams({ limit: String(limit) });
    if (before) query.set("before", before);
    return this.get(`/api/jobs?${query}`);
  }

  gallery(limit = 24, before?: string | null): Promise<GalleryPage> {
    const query = new URLSearchParams({ limit: String(limit) });
    if (before) query.set("before", before);
    return this.get(`/api/gallery?${query}`);
  }

  job(id: string): Promise<Job> {
    return this.get(`/api/jobs/${encodeURIComponent(id)}`);
  }

  /** A new job of an ended job's request and seed (`POST /api/jobs/<id>/again`). */
  runAgain(id: string): Promise<Job> {
    return this.post(`/api/jobs/${encodeURIComponent(id)}/again`, {});
  }

  async deleteJob(id: string): Promise<void> {
    const response = await fetchWithToken(this.url(`/api/jobs/${encodeURIComponent(id)}`), {
      method: "DELETE",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) throw await errorFrom(response, "job");
  }

  startJob(request: JobRequest): Promise<Job> {
    return this.post("/api/jobs", request);
  }

  stopJob(id: string): Promise<Job> {
    return this.post(`/api/jobs/${encodeURIComponent(id)}/stop`, {});
  }

  /** A binary download (a .npy array), or an ApiError naming `field`. */
  async bytes(path: string, field: string): Promise<ArrayBuffer> {
    const response = await fetchWithToken(this.url(path));
    if (!response.ok) throw await errorFrom(response, field);
    return response.arrayBuffer();
  }

  async uploadImage(file: File): Promise<ImageInfo> {
    const form = new FormData();
    form.append("file", file, file.name);
    const response = await fetchWithToken(this.url("/api/images"), { method: "POST", body: form });
    if (!response.ok) throw await errorFrom(response, "file");
    return (await response.json()) as ImageInfo;
  }

  /** A zip of images sent as a new data set (multipart `file`); `onProgress` gets the share sent, 0–1. */
  uploadDataset(file: File, onProgress?: (sent: number) => void): Promise<DatasetInfo> {
    const form = new FormData();
    form.append("file", file, file.name);
    // XMLHttpRequest rather than fetch: only it reports how much of a request body has been sent.
    const request = new XMLHttpRequest();
    return new Promise((resolve, reject) => {
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable && event.total > 0) onProgress?.(event.loaded / event.total);
      });
      request.addEventListener("load", () => {
        // Response() takes only 200–599; anything else is no answer at all.
        if (request.status < 200 || request.status > 599) {
          reject(new ApiError(request.status, "the server gave no answer to the upload", "file"));
          return;
        }
        const response = new Response(request.responseText, {
          status: request.status,
          statusText: request.statusText,
        });
        if (response.ok) resolve(response.json() as Promise<DatasetInfo>);
        else void errorFrom(response, "file").then(reject);
      });
      // The server may close the connection on a body over its limit before answering.
      request.addEventListener("error", () =>
        reject(new ApiError(0, "the upload failed: the server closed the connection", "file")),
      );
      request.open("POST", this.url("/api/datasets"));
      request.setRequestHeader("Accept", "application/json");
      for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
      request.send(form);
    });
  }
}
