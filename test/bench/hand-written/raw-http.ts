// NOT USED BY kv: the hand-written raw HTTP client kv chaos had until it was folded into
// src/lib/http-connection.ts (sendOnce; src/chaos/client.ts sendRaw). Kept as the A side of
// test/bench/raw-http-fold.ts.
import type { Socket } from "bun";
import { classifyResponse, type Outcome } from "../../../src/chaos/client.ts";

/** A request written on its own socket: `sent` resolves once every byte is in the kernel's hands. */
export interface PresentRequest {
  /** Resolves true once the whole request is written to the socket, false if that failed. */
  readonly sent: Promise<boolean>;
  readonly outcome: Promise<Outcome>;
}

/** Bytes of an HTTP response larger than this are not a kv answer: the request gives up (unknown). */
const RESPONSE_BYTES_MAX = 4 * 1024 * 1024;

/**
 * Sends one HTTP/1.1 request over a fresh TCP connection and tells when it has been written. Unlike
 * fetch, whose connect and write happen later on the event loop, this lets a scenario put requests
 * into a stopped process's socket (the kernel completes the handshake and buffers the bytes) before
 * it sends SIGCONT, so they are waiting the moment the process wakes.
 */
export function sendRaw(baseUrl: string, method: "GET" | "PUT", path: string, body: string | undefined, timeoutMs: number): PresentRequest {
  const url = new URL(baseUrl);
  const payload = new TextEncoder().encode(body ?? "");
  const head =
    `${method} ${path} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: close\r\n` +
    (method === "PUT" ? `Content-Type: application/octet-stream\r\nContent-Length: ${payload.byteLength}\r\n` : "") +
    "\r\n";
  let pending = concat([new TextEncoder().encode(head), method === "PUT" ? payload : new Uint8Array(0)]);

  let resolveSent: (sent: boolean) => void = () => {};
  const sent = new Promise<boolean>((resolve) => {
    resolveSent = resolve;
  });
  const outcome = new Promise<Outcome>((resolve) => {
    const chunks: Uint8Array[] = [];
    let received = 0;
    let settled = false;
    let socketRef: Socket<undefined> | undefined;
    const settle = (result: Outcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolveSent(false); // no-op when it already resolved true
      socketRef?.end();
      resolve(result);
    };
    const timer = setTimeout(() => settle({ kind: "unknown", reason: `no answer within ${timeoutMs} ms` }), timeoutMs);
    const write = (socket: Socket<undefined>) => {
      const written = socket.write(pending);
      if (written < 0) return settle({ kind: "unknown", reason: "write failed" });
      pending = pending.subarray(written);
      if (pending.byteLength === 0) resolveSent(true);
    };
    Bun.connect({
      hostname: url.hostname,
      port: Number(url.port),
      socket: {
        open(socket) {
          socketRef = socket;
          write(socket);
        },
        drain(socket) {
          if (pending.byteLength > 0) write(socket);
        },
        data(_socket, chunk) {
          received += chunk.byteLength;
          if (received > RESPONSE_BYTES_MAX) return settle({ kind: "unknown", reason: "answer too large" });
          chunks.push(chunk.slice());
        },
        close() {
          settle(parseResponse(method, concat(chunks)));
        },
        error(_socket, error) {
          settle({ kind: "unknown", reason: error.message });
        },
        connectError(_socket, error) {
          settle({ kind: "unknown", reason: error.message });
        },
      },
    }).catch((error: unknown) => settle({ kind: "unknown", reason: error instanceof Error ? error.message : String(error) }));
  });
  return { sent, outcome };
}

/** Parses a whole HTTP/1.1 response (read to EOF) and classifies it; a cut or garbled one is unknown. */
export function parseResponse(method: "GET" | "PUT", bytes: Uint8Array): Outcome {
  const text = new TextDecoder("latin1").decode(bytes);
  const headEnd = text.indexOf("\r\n\r\n");
  if (headEnd < 0) return { kind: "unknown", reason: bytes.byteLength === 0 ? "connection closed with no answer" : "answer cut in its headers" };
  const [statusLine = "", ...headerLines] = text.slice(0, headEnd).split("\r\n");
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1]);
  if (!Number.isInteger(status)) return { kind: "unknown", reason: `not an HTTP answer: ${statusLine.slice(0, 40)}` };
  const headers = new Map<string, string>();
  for (const line of headerLines) {
    const colon = line.indexOf(":");
    if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  let body = bytes.subarray(headEnd + 4);
  if (headers.get("transfer-encoding")?.toLowerCase() === "chunked") {
    const decoded = decodeChunked(body);
    if (decoded === undefined) return { kind: "unknown", reason: "answer cut in its body" };
    body = decoded;
  } else if (headers.has("content-length")) {
    const length = Number(headers.get("content-length"));
    if (!(length <= body.byteLength)) return { kind: "unknown", reason: "answer cut in its body" };
    body = body.subarray(0, length);
  }
  return classifyResponse(method, status, (name) => headers.get(name.toLowerCase()) ?? null, body);
}

/** Decodes a chunked body; undefined when it ends before the last (zero-length) chunk. */
function decodeChunked(bytes: Uint8Array): Uint8Array | undefined {
  const parts: Uint8Array[] = [];
  let at = 0;
  for (;;) {
    let lineEnd = at;
    while (lineEnd + 1 < bytes.byteLength && !(bytes[lineEnd] === 13 && bytes[lineEnd + 1] === 10)) lineEnd++;
    if (lineEnd + 1 >= bytes.byteLength) return undefined;
    const size = Number.parseInt(new TextDecoder().decode(bytes.subarray(at, lineEnd)).split(";")[0] ?? "", 16);
    if (!Number.isInteger(size) || size < 0) return undefined;
    if (size === 0) return concat(parts);
    const start = lineEnd + 2;
    if (start + size + 2 > bytes.byteLength) return undefined;
    parts.push(bytes.subarray(start, start + size));
    at = start + size + 2;
  }
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}
