// <convlens-code-map dataset="digits" server="…" thumb="32">: a data set's images drawn at their points.
//
// The points come from a job (`points` events while t-SNE runs, then the result's positions.npy) through
// setPositions(); the thumbnails from the data set's atlases (GET /api/datasets/<id>/atlas, 4096 a sheet).
// WebGL (regl) draws every thumbnail as one instanced quad, so 10,000 of them pan and zoom at the screen's
// rate. Drag pans, the wheel zooms about the cursor, a click dispatches `convlens-open-image` with
// `{dataset, index, image: "dataset:<id>:<index>"}` (bubbling, composed).

import createREGL from "regl";
import { normaliseServer } from "./api";
import { h, replaceChildren, sheet } from "./dom";

/** matplotlib's tab10, as the server's code_map frames colour labels (sorted label names, in turn). */
export const PALETTE: [number, number, number][] = [
  [31, 119, 180],
  [255, 127, 14],
  [44, 160, 44],
  [214, 39, 40],
  [148, 103, 189],
  [140, 86, 75],
  [227, 119, 194],
  [127, 127, 127],
  [188, 189, 34],
  [23, 190, 207],
];
const UNLABELLED: [number, number, number] = [200, 200, 200];
const ATLAS_ITEMS = 4096;
const HIDDEN = 1e9; // where a point without a grid cell is put: off every screen

/** `detail` of the `convlens-open-image` event. */
export interface OpenImage {
  /** The image id to open: `dataset:<id>:<index>` from a code map, `job:<id>:<name>` from a job's results. */
  image: string;
  dataset?: string;
  index?: number;
}

interface AtlasLayout {
  total: number;
  offset: number;
  count: number;
  columns: number;
  rows: number;
  labels: (string | null)[];
}

interface Atlas {
  layout: AtlasLayout;
  texture: createREGL.Texture2D;
}

// One shader pair for both ways of drawing (see render()): quads of two triangles, or POINTS sprites.
const VERT = `
precision highp float;
#ifndef POINTS
attribute vec2 corner;
#endif
attribute vec2 center;
attribute vec2 cell;
attribute vec3 color;
uniform vec2 camera;
uniform vec2 fit;
uniform float zoom;
uniform float quad;
uniform float pixels;
varying vec2 vCell;
varying vec3 vColor;
#ifdef POINTS
void main() {
  vec2 screen = (center - camera) * zoom * fit;
  gl_Position = vec4(screen.x, -screen.y, 0.0, 1.0);
  gl_PointSize = quad * pixels;
#else
varying vec2 uv;
void main() {
  vec2 p = center + (corner - 0.5) * quad;
  vec2 screen = (p - camera) * zoom * fit;
  gl_Position = vec4(screen.x, -screen.y, 0.0, 1.0);
  uv = corner;
#endif
  vCell = cell;
  vColor = color;
}`;

const FRAG = `
precision mediump float;
uniform sampler2D atlas;
uniform vec2 grid;
uniform float border;
varying vec2 vCell;
varying vec3 vColor;
#ifndef POINTS
varying vec2 uv;
#endif
void main() {
#ifdef POINTS
  vec2 uv = gl_PointCoord;
#endif
  if (uv.x < border || uv.y < border || uv.x > 1.0 - border || uv.y > 1.0 - border) {
    gl_FragColor = vec4(vColor, 1.0);
    return;
  }
  vec2 inner = (uv - border) / (1.0 - 2.0 * border);
  vec4 texel = texture2D(atlas, (vCell + inner) / grid);
  gl_FragColor = texel.a < 0.5 ? vec4(mix(vColor, vec3(1.0), 0.6), 1.0) : vec4(texel.rgb, 1.0);
}`;

const CSS = `
:host { display: block; position: relative; }
canvas { width: 100%; height: var(--cl-code-map-height, 560px); display: block; cursor: grab;
  background: #fff; border: 1px solid var(--cl-border, #ccc); border-radius: 4px; touch-action: none; }
canvas:active { cursor: grabbing; }
.bar { display: flex; gap: 0.75rem; align-items: center; flex-wrap: wrap; margin: 0.4rem 0; font-size: 0.85rem; }
.legend { display: flex; gap: 0.6rem; flex-wrap: wrap; list-style: none; margin: 0; padding: 0; }
.legend li { display: flex; gap: 0.25rem; align-items: center; }
.swatch { width: 0.8rem; height: 0.8rem; border-radius: 2px; display: inline-block; }
.status { color: var(--cl-muted, #666); }
`;

let styles: CSSStyleSheet | null = null;

export class ConvlensCodeMap extends HTMLElement {
  static observedAttributes = ["dataset", "server", "thumb"];

  /** Frames drawn so far (a bench reads it to measure frames per second). */
  frames = 0;
  private readonly root: ShadowRoot;
  private readonly canvas: HTMLCanvasElement;
  private readonly legend: HTMLUListElement;
  private readonly toggle: HTMLButtonElement;
  private readonly status: HTMLElement;
  private regl: createREGL.Regl | null = null;
  private draw: createREGL.DrawCommand | null = null;
  private corners: createREGL.Buffer | null = null;
  private centers: createREGL.Buffer | null = null;
  private cells: createREGL.Buffer | null = null;
  private colors: createREGL.Buffer | null = null;
  private pointCenters: createREGL.Buffer | null = null;
  private pointCells: createREGL.Buffer | null = null;
  private pointColors: createREGL.Buffer | null = null;
  private drawPoints: createREGL.DrawCommand | null = null;
  private maxPointSize = 0;
  private atlases: Atlas[] = [];
  private labels: (string | null)[] = [];
  private streamed: Float32Array = new Float32Array();
  private gridCells: Float32Array | null = null;
  private showGrid = false;
  /** The points as drawn: the layout scaled uniformly into [0, 1]², x then y per point. */
  private placed: Float32Array = new Float32Array();
  private quad = 0.02;
  private camera: [number, number] = [0.5, 0.5];
  private zoom = 1;
  private scheduled = 0;
  private loadedFor = "";
  private dragged = 0;
  /** Points whose atlas cell and colour are uploaded. */
  private looks = 0;

  constructor() {
    super();
    this.root = this.attachShadow({ mode: "open" });
    styles ??= sheet(CSS);
    this.root.adoptedStyleSheets = [styles];
    this.canvas = h("canvas", { "data-testid": "code-map-canvas" });
    this.legend = h("ul", { class: "legend", "data-testid": "code-map-legend" });
    this.toggle = h("button", { type: "button", "data-testid": "code-map-toggle", hidden: true }, "Grid");
    this.toggle.addEventListener("click", () => this.setLayout(!this.showGrid));
    this.status = h("span", { class: "status", "data-testid": "code-map-status" });
    replaceChildren(
      this.root,
      this.canvas,
      h("div", { class: "bar" }, this.toggle, this.legend, this.status),
    );
    this.listen();
  }

  connectedCallback(): void {
    this.start();
    void this.loadAtlases();
  }

  disconnectedCallback(): void {
    cancelAnimationFrame(this.scheduled);
    this.scheduled = 0;
    this.regl?.destroy();
    this.regl = null;
    this.draw = null;
    this.atlases = [];
    this.loadedFor = "";
  }

  attributeChangedCallback(): void {
    if (this.isConnected) void this.loadAtlases();
  }

  /** The number of points drawn. */
  get count(): number {
    return this.placed.length / 2;
  }

  /** Whether the grid layout is shown (rather than the streamed one). */
  get grid(): boolean {
    return this.showGrid;
  }

  /** The streamed layout: x0, y0, x1, y1, … (a `points` event's data at `step`, or positions.npy). */
  setPositions(positions: Float32Array, step: number | null = null): void {
    this.streamed = positions;
    if (step === null) delete this.dataset.step;
    else this.dataset.step = String(step);
    this.place();
  }

  /** The grid layout: row0, col0, row1, col1, … (grid_positions.npy; -1 where a point has no cell). */
  setGrid(cells: Float32Array | null): void {
    this.gridCells = cells;
    this.toggle.hidden = !cells;
    this.setLayout(this.showGrid);
  }

  setLayout(grid: boolean): void {
    this.showGrid = grid && this.gridCells !== null;
    this.toggle.textContent = this.showGrid ? "Map layout" : "Grid layout";
    this.toggle.setAttribute("aria-pressed", String(this.showGrid));
    this.place();
  }

  /** Moves the view by (dx, dy) CSS pixels, as a drag does. */
  panBy(dx: number, dy: number): void {
    const scale = this.pixelsPerUnit();
    this.camera = [this.camera[0] - dx / scale, this.camera[1] - dy / scale];
    this.redraw();
  }

  /** Zooms by `factor` about the point under (x, y) CSS pixels from the canvas's top left. */
  zoomAt(factor: number, x: number, y: number): void {
    const before = this.toData(x, y);
    this.zoom = Math.min(200, Math.max(0.2, this.zoom * factor));
    const after = this.toData(x, y);
    this.camera = [this.camera[0] + before[0] - after[0], this.camera[1] + before[1] - after[1]];
    this.redraw();
  }

  /** The index of the topmost thumbnail under (x, y) CSS pixels, or -1. */
  pick(x: number, y: number): number {
    const [px, py] = this.toData(x, y);
    const half = this.quad / 2;
    for (let i = this.count - 1; i >= 0; i--) {
      const cx = this.placed[2 * i] ?? HIDDEN;
      const cy = this.placed[2 * i + 1] ?? HIDDEN;
      if (Math.abs(px - cx) <= half && Math.abs(py - cy) <= half) return i;
    }
    return -1;
  }

  /** Where point `index` is drawn, in CSS pixels from the canvas's top left (null when it is not drawn). */
  screenOf(index: number): [number, number] | null {
    const x = this.placed[2 * index];
    const y = this.placed[2 * index + 1];
    if (x === undefined || y === undefined || x === HIDDEN) return null;
    const scale = this.pixelsPerUnit();
    return [
      (x - this.camera[0]) * scale + this.canvas.clientWidth / 2,
      (y - this.camera[1]) * scale + this.canvas.clientHeight / 2,
    ];
  }

  private pixelsPerUnit(): number {
    return Math.min(this.canvas.clientWidth, this.canvas.clientHeight) * this.zoom;
  }

  private toData(x: number, y: number): [number, number] {
    const scale = this.pixelsPerUnit();
    return [
      (x - this.canvas.clientWidth / 2) / scale + this.camera[0],
      (y - this.canvas.clientHeight / 2) / scale + this.camera[1],
    ];
  }

  private listen(): void {
    let last: [number, number] | null = null;
    this.canvas.addEventListener("pointerdown", (event) => {
      last = [event.clientX, event.clientY];
      this.dragged = 0;
      this.canvas.setPointerCapture?.(event.pointerId);
    });
    this.canvas.addEventListener("pointermove", (event) => {
      if (!last) return;
      const dx = event.clientX - last[0];
      const dy = event.clientY - last[1];
      this.dragged += Math.abs(dx) + Math.abs(dy);
      last = [event.clientX, event.clientY];
      this.panBy(dx, dy);
    });
    const end = () => (last = null);
    this.canvas.addEventListener("pointerup", end);
    this.canvas.addEventListener("pointercancel", end);
    this.canvas.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        const box = this.canvas.getBoundingClientRect();
        this.zoomAt(Math.exp(-event.deltaY * 0.002), event.clientX - box.left, event.clientY - box.top);
      },
      { passive: false },
    );
    this.canvas.addEventListener("click", (event) => {
      if (this.dragged > 4) return; // the end of a drag, not a click
      const box = this.canvas.getBoundingClientRect();
      const index = this.pick(event.clientX - box.left, event.clientY - box.top);
      const dataset = this.getAttribute("dataset") ?? "";
      if (index < 0 || !dataset) return;
      const detail: OpenImage = { dataset, index, image: `dataset:${dataset}:${index}` };
      this.dispatchEvent(new CustomEvent("convlens-open-image", { detail, bubbles: true, composed: true }));
    });
  }

  private start(): void {
    if (this.regl) return;
    try {
      this.regl = createREGL({
        canvas: this.canvas,
        // Kept so the page (and a test) can read back what was drawn.
        attributes: { preserveDrawingBuffer: true, antialias: false, alpha: false },
      });
    } catch (error) {
      this.status.textContent = `WebGL is not available: ${String(error)}`;
      return;
    }
    const regl = this.regl;
    const corners = regl.buffer({ usage: "static", type: "float", length: 0 });
    this.corners = corners;
    const centers = regl.buffer({ usage: "dynamic", type: "float", length: 0 });
    this.centers = centers;
    const cells = regl.buffer({ usage: "static", type: "float", length: 0 });
    this.cells = cells;
    const colors = regl.buffer({ usage: "static", type: "float", length: 0 });
    this.colors = colors;
    const pointCenters = regl.buffer({ usage: "dynamic", type: "float", length: 0 });
    this.pointCenters = pointCenters;
    const pointCells = regl.buffer({ usage: "static", type: "float", length: 0 });
    this.pointCells = pointCells;
    const pointColors = regl.buffer({ usage: "static", type: "float", length: 0 });
    this.pointColors = pointColors;
    this.maxPointSize = regl.limits.pointSizeDims[1] ?? 0;
    const uniforms = {
      atlas: (_context: createREGL.DefaultContext, props: DrawProps) => props.texture,
      grid: (_context: createREGL.DefaultContext, props: DrawProps) => props.grid,
      camera: () => this.camera,
      zoom: () => this.zoom,
      quad: () => this.quad,
      pixels: (context: createREGL.DefaultContext) =>
        Math.min(context.viewportWidth, context.viewportHeight) * this.zoom,
      border: 0.08,
      fit: (context: createREGL.DefaultContext) => {
        const side = Math.min(context.viewportWidth, context.viewportHeight);
        return [(2 * side) / context.viewportWidth, (2 * side) / context.viewportHeight];
      },
    };
    this.draw = regl<Uniforms, Attributes, DrawProps>({
      vert: VERT,
      frag: FRAG,
      attributes: {
        corner: corners,
        center: centers,
        cell: cells,
        color: colors,
      },
      uniforms,
      offset: (_context, props: DrawProps) => VERTICES * props.first,
      count: (_context, props: DrawProps) => VERTICES * props.count,
      depth: { enable: false },
    });
    this.drawPoints = regl<Uniforms, Attributes, DrawProps>({
      vert: `#define POINTS\n${VERT}`,
      frag: `#define POINTS\n${FRAG}`,
      attributes: {
        center: pointCenters,
        cell: pointCells,
        color: pointColors,
      },
      uniforms,
      primitive: "points",
      offset: (_context, props: DrawProps) => props.first,
      count: (_context, props: DrawProps) => props.count,
      depth: { enable: false },
    });
  }

  private async loadAtlases(): Promise<void> {
    const dataset = this.getAttribute("dataset") ?? "";
    const thumb = Number(this.getAttribute("thumb") ?? 32) || 32;
    const key = `${this.server}|${dataset}|${thumb}`;
    if (!dataset || key === this.loadedFor || !this.regl) return;
    this.loadedFor = key;
    this.status.textContent = "loading thumbnails…";
    const base = `${this.server}/api/datasets/${encodeURIComponent(dataset)}`;
    try {
      const atlases: Atlas[] = [];
      let total = Infinity;
      for (let offset = 0; offset < total; offset += ATLAS_ITEMS) {
        const query = `size=${thumb}&offset=${offset}&limit=${ATLAS_ITEMS}`;
        const answer = await fetch(`${base}/atlas.json?${query}`);
        if (!answer.ok) throw new Error(`atlas.json: HTTP ${answer.status}`);
        const layout = (await answer.json()) as AtlasLayout;
        total = layout.total;
        const picture = new Image();
        picture.crossOrigin = "anonymous";
        picture.src = `${base}/atlas?${query}`;
        await picture.decode();
        if (this.loadedFor !== key || !this.regl) return;
        atlases.push({ layout, texture: this.regl.texture({ data: picture, min: "linear", mag: "linear" }) });
      }
      this.atlases = atlases;
      this.looks = 0;
      this.labels = atlases.flatMap((atlas) => atlas.layout.labels);
      this.dataset.atlases = String(atlases.length);
      this.status.textContent = "";
      this.describeLabels();
      this.place();
    } catch (error) {
      this.loadedFor = "";
      this.status.textContent = `thumbnails could not be loaded: ${String(error)}`;
    }
  }

  private describeLabels(): void {
    const names = [...new Set(this.labels.filter((label): label is string => label !== null))].sort();
    replaceChildren(
      this.legend,
      ...names.map((name, i) => {
        const [r, g, b] = PALETTE[i % PALETTE.length] ?? UNLABELLED;
        return h(
          "li",
          { "data-label": name },
          h("span", { class: "swatch", style: `background: rgb(${r}, ${g}, ${b})` }),
          name,
        );
      }),
    );
  }

  /** Scales the layout shown into [0, 1]² (one factor for both axes) and uploads it. */
  private place(): void {
    const grid = this.showGrid ? this.gridCells : null;
    const source = grid ?? this.streamed;
    const n = Math.min(source.length / 2, this.labels.length || Infinity);
    const placed = new Float32Array(2 * n);
    if (grid) {
      let side = 1;
      for (let i = 0; i < grid.length; i++) side = Math.max(side, (grid[i] ?? 0) + 1);
      for (let i = 0; i < n; i++) {
        const row = grid[2 * i] ?? -1;
        const col = grid[2 * i + 1] ?? -1;
        placed[2 * i] = row < 0 ? HIDDEN : (col + 0.5) / side;
        placed[2 * i + 1] = row < 0 ? HIDDEN : (row + 0.5) / side;
      }
      this.quad = 1 / side;
    } else {
      let [minX, minY, maxX, maxY] = [Infinity, Infinity, -Infinity, -Infinity];
      for (let i = 0; i < n; i++) {
        const x = source[2 * i] ?? 0;
        const y = source[2 * i + 1] ?? 0;
        [minX, maxX, minY, maxY] = [
          Math.min(minX, x),
          Math.max(maxX, x),
          Math.min(minY, y),
          Math.max(maxY, y),
        ];
      }
      const span = Math.max(maxX - minX, maxY - minY) || 1;
      // Room for the thumbnails at the edges; each about as wide as a point's share of the square.
      this.quad = Math.min(0.08, 1.2 / Math.sqrt(Math.max(n, 1)));
      const room = 1 - this.quad;
      const [offX, offY] = [(1 - ((maxX - minX) / span) * room) / 2, (1 - ((maxY - minY) / span) * room) / 2];
      for (let i = 0; i < n; i++) {
        placed[2 * i] = offX + (((source[2 * i] ?? 0) - minX) / span) * room;
        placed[2 * i + 1] = offY + (((source[2 * i + 1] ?? 0) - minY) / span) * room;
      }
    }
    this.placed = placed;
    this.dataset.points = String(n);
    this.centers?.({ data: perVertex(placed, 2), usage: "dynamic" });
    this.pointCenters?.({ data: placed, usage: "dynamic" });
    this.uploadLooks(n);
    this.redraw();
  }

  private uploadLooks(n: number): void {
    if (!this.cells || !this.colors || this.atlases.length === 0 || this.looks >= n) return;
    const names = [...new Set(this.labels.filter((label): label is string => label !== null))].sort();
    const cells = new Float32Array(2 * n);
    const colors = new Float32Array(3 * n);
    let index = 0;
    for (const atlas of this.atlases) {
      for (let i = 0; i < atlas.layout.count && index < n; i++, index++) {
        cells[2 * index] = i % atlas.layout.columns;
        cells[2 * index + 1] = Math.floor(i / atlas.layout.columns);
        const label = this.labels[index] ?? null;
        const colour =
          label === null ? UNLABELLED : (PALETTE[names.indexOf(label) % PALETTE.length] ?? UNLABELLED);
        colors.set(
          colour.map((c) => c / 255),
          3 * index,
        );
      }
    }
    this.cells({ data: perVertex(cells, 2) });
    this.colors({ data: perVertex(colors, 3) });
    this.pointCells?.({ data: cells });
    this.pointColors?.({ data: colors });
    this.corners?.({ data: tiledCorners(n) });
    this.looks = n;
  }

  private redraw(): void {
    if (this.scheduled) return;
    this.scheduled = requestAnimationFrame(() => {
      this.scheduled = 0;
      this.render();
    });
  }

  private render(): void {
    const regl = this.regl;
    if (!regl || !this.draw || !this.drawPoints) return;
    const dpr = window.devicePixelRatio || 1;
    const [width, height] = [
      Math.round(this.canvas.clientWidth * dpr),
      Math.round(this.canvas.clientHeight * dpr),
    ];
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    regl.poll();
    regl.clear({ color: [1, 1, 1, 1] });
    const n = this.count;
    // A point sprite is one vertex where a quad is six, and software WebGL's cost goes with the vertices
    // (SwiftShader: 10,000 thumbnails at 14 frames a second as quads, 36 as points on 2 cores); quads only
    // where a thumbnail is larger than the largest point the implementation draws.
    const draw =
      this.quad * Math.min(width, height) * this.zoom <= this.maxPointSize ? this.drawPoints : this.draw;
    this.dataset.drawnAs = draw === this.drawPoints ? "points" : "quads";
    if (this.atlases.length > 0 && this.looks >= n) {
      for (const atlas of this.atlases) {
        const first = atlas.layout.offset;
        const count = Math.min(atlas.layout.count, n - first);
        if (count <= 0) continue;
        draw({ first, count, texture: atlas.texture, grid: [atlas.layout.columns, atlas.layout.rows] });
      }
    }
    this.frames += 1;
    this.dataset.frames = String(this.frames);
  }

  private get server(): string {
    return normaliseServer(this.getAttribute("server"));
  }
}

/** A quad's two triangles as six (x, y) corners of the unit square, flattened. */
const CORNERS = [0, 0, 1, 0, 0, 1, 0, 1, 1, 0, 1, 1];
/** Vertices per thumbnail: plain triangles rather than instancing, which Chromium's software WebGL
 * (SwiftShader through ANGLE) drew at 4 frames a second for 10,000 quads on 2 cores. */
const VERTICES = 6;

/** Each point's `width` values repeated for the six vertices of its quad. */
function perVertex(values: Float32Array, width: number): Float32Array {
  const n = values.length / width;
  const out = new Float32Array(values.length * VERTICES);
  for (let i = 0; i < n; i++)
    for (let v = 0; v < VERTICES; v++)
      for (let k = 0; k < width; k++) out[(i * VERTICES + v) * width + k] = values[i * width + k] ?? 0;
  return out;
}

function tiledCorners(n: number): Float32Array {
  const out = new Float32Array(n * CORNERS.length);
  for (let i = 0; i < n; i++) out.set(CORNERS, i * CORNERS.length);
  return out;
}

interface Uniforms {
  atlas: createREGL.Texture2D;
  grid: [number, number];
  camera: [number, number];
  zoom: number;
  quad: number;
  pixels: number;
  border: number;
  fit: number[];
}

type Attributes = Record<string, createREGL.Attribute>;

interface DrawProps {
  first: number;
  count: number;
  texture: createREGL.Texture2D;
  grid: [number, number];
}

declare global {
  interface HTMLElementTagNameMap {
    "convlens-code-map": ConvlensCodeMap;
  }
  interface HTMLElementEventMap {
    "convlens-open-image": CustomEvent<OpenImage>;
  }
}
