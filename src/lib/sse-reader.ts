/**
 * A small reader of Server-Sent Events (`text/event-stream`) over a fetch body, for the code that
 * follows `GET /watch` (the chaos runner, the bench). Self-contained (no kv types), so it can move
 * into a client library as it is. It follows the event-stream format of the HTML standard: lines
 * end in CRLF, LF or CR; `:` starts a comment; `id`, `event` and `data` fields build an event that a
 * blank line dispatches; `data` lines join with LF; an event with no data is not dispatched; the
 * last event id carries over to later events that name none; an `id` holding NUL is ignored.
 */

/** One dispatched event. */
export interface SseEvent {
  /** The last event id when it was dispatched (`""` until some event named one). */
  readonly id: string;
  /** The `event` field, or `message` when it had none. */
  readonly event: string;
  /** The `data` lines, joined with LF. */
  readonly data: string;
}

/** Thrown when one line or one event's data grows past the reader's bound. */
export class SseTooLargeError extends Error {
  constructor(readonly charsMax: number) {
    super(`a Server-Sent Event line or data longer than ${charsMax} characters`);
    this.name = "SseTooLargeError";
  }
}

export interface SseReaderOptions {
  /** Characters one line, and one event's data, may hold at most (default 8 Mi). */
  readonly charsMax?: number;
}

const CHARS_MAX_DEFAULT = 8 * 1024 * 1024;

/**
 * Parses an event stream incrementally: feed it text as it arrives, take the events it completed.
 * Bounded: a line or an event's data past `charsMax` throws SseTooLargeError.
 */
export class SseParser {
  private readonly charsMax: number;
  private pending = "";
  /** The previous chunk ended in CR: an LF starting the next one belongs to that line end. */
  private afterCr = false;
  private atStart = true;
  private lastId = "";
  private eventType = "";
  private data: string[] = [];
  private dataChars = 0;

  constructor(opts: SseReaderOptions = {}) {
    this.charsMax = opts.charsMax ?? CHARS_MAX_DEFAULT;
  }

  /** Takes the next piece of the stream; returns the events it completed, in order. */
  push(text: string): SseEvent[] {
    let chunk = text;
    if (this.atStart && chunk.length > 0) {
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
      this.atStart = false;
    }
    if (this.afterCr && chunk.startsWith("\n")) chunk = chunk.slice(1);
    this.afterCr = false;
    const events: SseEvent[] = [];
    const buffer = this.pending + chunk;
    let at = 0;
    for (;;) {
      const cr = buffer.indexOf("\r", at);
      const lf = buffer.indexOf("\n", at);
      const end = cr === -1 ? lf : lf === -1 ? cr : Math.min(cr, lf);
      if (end === -1) break;
      this.line(buffer.slice(at, end), events);
      at = end + 1;
      if (buffer[end] === "\r") {
        if (at === buffer.length) this.afterCr = true; // an LF may start the next chunk
        else if (buffer[at] === "\n") at++;
      }
    }
    const rest = buffer.slice(at);
    if (rest.length > this.charsMax) throw new SseTooLargeError(this.charsMax);
    this.pending = rest;
    return events;
  }

  private line(line: string, events: SseEvent[]): void {
    if (line === "") {
      this.dispatch(events);
      return;
    }
    if (line.startsWith(":")) return; // a comment
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "event":
        this.eventType = value;
        break;
      case "data":
        this.dataChars += value.length + 1;
        if (this.dataChars > this.charsMax) throw new SseTooLargeError(this.charsMax);
        this.data.push(value);
        break;
      case "id":
        if (!value.includes("\0")) this.lastId = value;
        break;
      default:
        break; // `retry` and unknown fields: nothing this reader uses
    }
  }

  private dispatch(events: SseEvent[]): void {
    const hasData = this.data.length > 0;
    const event: SseEvent = { id: this.lastId, event: this.eventType === "" ? "message" : this.eventType, data: this.data.join("\n") };
    this.eventType = "";
    this.data = [];
    this.dataChars = 0;
    if (hasData) events.push(event);
  }
}

/**
 * The events of an event-stream body as they arrive. Ends when the body ends (an event not closed
 * by a blank line is dropped, as the standard says); throws what reading the body throws (a cut
 * connection, an abort).
 */
export async function* readSse(body: ReadableStream<Uint8Array>, opts: SseReaderOptions = {}): AsyncGenerator<SseEvent> {
  const parser = new SseParser(opts);
  const decoder = new TextDecoder();
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      yield* parser.push(decoder.decode(value, { stream: true }));
    }
    yield* parser.push(decoder.decode());
  } finally {
    // An abandoned or failed read: let go of the body (cancel is a no-op once it has ended).
    await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}
