// Draws streamed frames on canvases, newest first, and acknowledges each one.
//
// The server sends a viewer its next frame only after the viewer acks the last
// one (the README's API section, `frame_ack`). Frames can still pile up (the catch-up frame on
// subscribe, several labels), so per label only the newest waiting frame is
// drawn; a frame replaced before it was drawn is acked at once, so the server
// never waits on a frame that will not be drawn.

export interface FrameEvent {
  job: string;
  seq: number;
  step: number | null;
  label: string;
  mime: string;
  width: number;
  height: number;
  data: ArrayBuffer | ArrayBufferView | Blob;
}

export interface FramePainterOptions {
  /** Frames drawn per second at most: the ack of a drawn frame (which lets the server send the next) waits
   * until 1/maxFps has passed since the previous draw. 0: no limit. */
  maxFps?: number;
}

/** Something that draws a frame's picture itself, e.g. split into panels (panel-strip.ts). */
export interface FrameSurface {
  draw(bitmap: ImageBitmap, frame: FrameEvent): void;
}

export interface FramePainterHooks {
  /** The canvas (or surface) that shows frames of `label`, created on first use. */
  canvasFor(label: string): HTMLCanvasElement | FrameSurface;
  /** Frame `seq` was drawn or dropped: tell the server. */
  ack(seq: number): void;
  drawn?(frame: FrameEvent): void;
  failed?(frame: FrameEvent, error: unknown): void;
}

function asBlob(frame: FrameEvent): Blob {
  const { data, mime } = frame;
  if (data instanceof Blob) return data.type ? data : new Blob([data], { type: mime });
  if (ArrayBuffer.isView(data)) {
    const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    return new Blob([bytes], { type: mime });
  }
  return new Blob([data], { type: mime });
}

export class FramePainter {
  private readonly waiting = new Map<string, FrameEvent>();
  private busy = false;
  private disposed = false;
  drawnCount = 0;
  private lastDrawn = -Infinity;
  private readonly minInterval: number;

  constructor(
    private readonly hooks: FramePainterHooks,
    options: FramePainterOptions = {},
  ) {
    const maxFps = options.maxFps ?? 0;
    this.minInterval = maxFps > 0 ? 1000 / maxFps : 0;
  }

  push(frame: FrameEvent): void {
    if (this.disposed) return;
    const label = frame.label || "main";
    const replaced = this.waiting.get(label);
    if (replaced) this.hooks.ack(replaced.seq);
    this.waiting.set(label, { ...frame, label });
    void this.pump();
  }

  /** Forget waiting frames (acking them) and stop drawing. */
  dispose(): void {
    this.disposed = true;
    for (const frame of this.waiting.values()) this.hooks.ack(frame.seq);
    this.waiting.clear();
  }

  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      while (!this.disposed && this.waiting.size > 0) {
        const [label, frame] = this.waiting.entries().next().value as [string, FrameEvent];
        this.waiting.delete(label);
        await this.draw(frame);
        this.lastDrawn = performance.now();
        await this.pace();
        this.hooks.ack(frame.seq);
      }
    } finally {
      this.busy = false;
    }
  }

  /** Wait out the rest of the minimum interval after a draw (the viewer's frame rate). */
  private pace(): Promise<void> {
    const wait = this.lastDrawn + this.minInterval - performance.now();
    if (this.disposed || wait <= 0) return Promise.resolve();
    return new Promise((resolve) => window.setTimeout(resolve, wait));
  }

  private async draw(frame: FrameEvent): Promise<void> {
    try {
      const bitmap = await createImageBitmap(asBlob(frame));
      if (this.disposed) {
        bitmap.close();
        return;
      }
      const canvas = this.hooks.canvasFor(frame.label);
      if (canvas instanceof HTMLCanvasElement) {
        if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
          canvas.width = bitmap.width;
          canvas.height = bitmap.height;
        }
        const context = canvas.getContext("2d");
        context?.drawImage(bitmap, 0, 0);
        canvas.dataset.seq = String(frame.seq);
        if (frame.step !== null && frame.step !== undefined) canvas.dataset.step = String(frame.step);
      } else {
        canvas.draw(bitmap, frame);
      }
      bitmap.close();
      this.drawnCount += 1;
      this.hooks.drawn?.(frame);
    } catch (error) {
      this.hooks.failed?.(frame, error);
    }
  }
}
