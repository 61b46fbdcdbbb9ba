import { KvError } from "../lib/kv-error.ts";

/**
 * Reads a request body as raw bytes, refusing anything over `bytesMax` with `too_large`.
 * A declared Content-Length over the limit is refused before a byte of the body is read; the real
 * length is checked too, and a body without Content-Length (chunked) is read only up to the limit.
 * What is left unread is drained by the handler after the answer (see `lingeringResponse`).
 * The body is read once; the route must use `parse: "none"` so Elysia has not consumed it.
 */
export async function readBodyBytesMax(request: Request, bytesMax: number, readTimeoutMs?: number, what = "the value"): Promise<Uint8Array> {
  const declaredBytes = declaredBodyBytes(request);
  if (declaredBytes !== undefined) {
    if (Number.isNaN(declaredBytes)) throw new KvError("bad_request", "Content-Length is not a number of bytes");
    if (declaredBytes > bytesMax) throw tooLarge(what, declaredBytes, bytesMax);
    if (declaredBytes === 0) return new Uint8Array(0);
    const bytes = new Uint8Array(await withDeadline(unreadable(request.arrayBuffer()), readTimeoutMs));
    if (bytes.byteLength > bytesMax) throw tooLarge(what, bytes.byteLength, bytesMax);
    return bytes;
  }
  if (request.body === null) return new Uint8Array(0);
  return withDeadline(readStreamBytesMax(request.body, bytesMax, what), readTimeoutMs);
}

/**
 * `reading`, or `request_timeout` once `timeoutMs` pass (the body trickles in, or stopped). The read
 * left behind settles when the connection closes, which the 408 asks for.
 */
async function withDeadline<T>(reading: Promise<T>, timeoutMs: number | undefined): Promise<T> {
  if (timeoutMs === undefined) return reading;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new KvError("request_timeout", `the request body did not arrive within ${timeoutMs} ms (--request-read-timeout)`)),
      timeoutMs,
    );
  });
  reading.catch(() => undefined); // a read that fails after the deadline has nobody left to tell
  try {
    return await Promise.race([reading, expired]);
  } finally {
    clearTimeout(timer);
  }
}

async function readStreamBytesMax(stream: ReadableStream<Uint8Array>, bytesMax: number, what: string): Promise<Uint8Array> {
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let totalBytes = 0;
  for (;;) {
    const { done, value } = await unreadable(reader.read());
    if (done) break;
    totalBytes += value.byteLength;
    if (totalBytes > bytesMax) {
      // Not cancelled: the handler reads and discards the rest after answering (lingering close,
      // http-handler.ts), so the client sees the 413 instead of a reset connection.
      reader.releaseLock();
      throw new KvError("too_large", `${what} is over the limit of ${bytesMax} bytes`);
    }
    chunks.push(value);
  }
  if (chunks.length === 1 && chunks[0] !== undefined) return chunks[0];
  const bytes = new Uint8Array(totalBytes);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

/**
 * A body that cannot be read (the client hung up mid-body, or sent less than its Content-Length)
 * is the client's doing, not a bug: `bad_request`, which the client will likely never see.
 */
async function unreadable<T>(reading: Promise<T>): Promise<T> {
  try {
    return await reading;
  } catch (error) {
    if (error instanceof KvError) throw error;
    throw new KvError("bad_request", `the request body could not be read: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** `what`: the value (a PUT's body), or the body (a lease's, a member's, a transaction's). */
function tooLarge(what: string, bytes: number, bytesMax: number): KvError {
  return new KvError("too_large", `${what} is ${bytes} bytes; the limit is ${bytesMax}`);
}

/** The request's Content-Length: undefined when it has none (chunked), NaN when it is not a number of bytes. */
export function declaredBodyBytes(request: Request): number | undefined {
  const contentLength = request.headers.get("content-length");
  if (contentLength === null) return undefined;
  const trimmed = contentLength.trim();
  return /^[0-9]+$/.test(trimmed) ? Number(trimmed) : Number.NaN;
}
