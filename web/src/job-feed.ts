// Several jobs watched over one Socket.IO connection: each job's events go to its own handlers.
// (<convlens-job-view> opens a connection per view; a grid of many small views shares one.)

import { io, type Socket } from "socket.io-client";
import type { FieldError, Job, JobResult } from "./api";
import type { FrameEvent } from "./frame-painter";
import { socketAuth } from "./token";

export interface JobHandlers {
  job(job: Job): void;
  frame(frame: FrameEvent): void;
  progress(step: number, total: number): void;
  done(result: JobResult | null): void;
  failed(error: FieldError | null): void;
  stopped(): void;
  /** The subscription was refused or the connection is in trouble. */
  problem(message: string): void;
}

const ACK_TIMEOUT_MS = 10_000;

export class JobFeed {
  private socket: Socket | null = null;
  private readonly handlers = new Map<string, JobHandlers>();

  constructor(private readonly server: string) {}

  watch(job: string, handlers: JobHandlers): void {
    this.handlers.set(job, handlers);
    const socket = this.connect();
    if (socket.connected) this.subscribe(socket, job);
  }

  unwatch(job: string): void {
    if (!this.handlers.delete(job)) return;
    if (this.socket?.connected) this.socket.emit("unsubscribe", { job });
  }

  /** Tell the server frame `seq` of `job` is drawn (or dropped), so it sends the next. */
  ack(job: string, seq: number): void {
    this.socket?.emit("frame_ack", { job, seq });
  }

  close(): void {
    const socket = this.socket;
    this.socket = null;
    this.handlers.clear();
    if (socket) {
      socket.removeAllListeners();
      socket.disconnect();
    }
  }

  private connect(): Socket {
    if (this.socket) return this.socket;
    const options = { forceNew: true, reconnectionDelayMax: 5000, auth: socketAuth };
    const socket = this.server ? io(this.server, options) : io(options);
    this.socket = socket;
    const route = (payload: { job?: string } | null | undefined) =>
      payload?.job === undefined ? undefined : this.handlers.get(payload.job);

    // On every (re)connection: subscribe again, and the server replays each job's state.
    socket.on("connect", () => {
      for (const job of this.handlers.keys()) this.subscribe(socket, job);
    });
    socket.on("connect_error", (error: Error) => {
      for (const handlers of this.handlers.values())
        handlers.problem(`cannot reach the server: ${error.message}`);
    });
    socket.on("job", (payload: Job) => this.handlers.get(payload?.id)?.job(payload));
    socket.on("frame", (payload: FrameEvent) => {
      const handlers = route(payload);
      if (handlers) handlers.frame(payload);
      else this.ack(payload.job, payload.seq);
    });
    socket.on("progress", (payload: { job: string; step: number; total: number }) =>
      route(payload)?.progress(payload.step, payload.total),
    );
    socket.on("done", (payload: { job: string; result: JobResult | null }) =>
      route(payload)?.done(payload.result),
    );
    socket.on("failed", (payload: { job: string; error: FieldError | null }) =>
      route(payload)?.failed(payload.error),
    );
    socket.on("stopped", (payload: { job: string }) => route(payload)?.stopped());
    return socket;
  }

  private subscribe(socket: Socket, job: string): void {
    socket
      .timeout(ACK_TIMEOUT_MS)
      .emit(
        "subscribe",
        { job },
        (timeout: Error | null, ack?: { ok: boolean; error?: string; field?: string }) => {
          const handlers = this.handlers.get(job);
          if (!handlers || socket !== this.socket) return;
          if (timeout) handlers.problem("the server did not answer the subscription");
          else if (ack && !ack.ok)
            handlers.problem(`${ack.field ? `${ack.field}: ` : ""}${ack.error ?? "refused"}`);
        },
      );
  }
}
