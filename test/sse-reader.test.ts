// Proves the Server-Sent Events reader follows the event-stream format whatever the chunking: LF, CRLF and CR line ends (a CRLF split across chunks included), multi-line data, comments, the last event id carrying over, events without data not dispatched, an unterminated last event dropped, and a bound on line length.
import { describe, expect, test } from "bun:test";
import { readSse, SseParser, SseTooLargeError, type SseEvent } from "../src/lib/sse-reader.ts";

/** The events of `text` fed to a parser in pieces of `size` characters. */
function parseInPieces(text: string, size: number): SseEvent[] {
  const parser = new SseParser();
  const events: SseEvent[] = [];
  for (let at = 0; at < text.length; at += size) events.push(...parser.push(text.slice(at, at + size)));
  return events;
}

const stream =
  "\uFEFF: a comment\n" +
  "id: 1042\nevent: put\ndata: {\"key\":\"cfg/a\",\"value\":\"on\",\"version\":1042}\n\n" +
  "id: 1043\r\nevent: delete\r\ndata: first\r\ndata: second\r\n\r\n" +
  "event: progress\rdata:{\"version\":1050}\r\r" +
  "id: 1060\nevent: nothing\n\n" +
  "event: error\ndata: {\"error\":\"slow_watcher\"}\n\n" +
  "data: cut before its blank line\n";

const expected: SseEvent[] = [
  { id: "1042", event: "put", data: '{"key":"cfg/a","value":"on","version":1042}' },
  { id: "1043", event: "delete", data: "first\nsecond" },
  { id: "1043", event: "progress", data: '{"version":1050}' },
  { id: "1060", event: "error", data: '{"error":"slow_watcher"}' },
];

describe("the SSE reader", () => {
  test("parses every field and line ending, in any chunking", () => {
    for (const size of [1, 2, 3, 7, 64, stream.length]) expect(parseInPieces(stream, size)).toEqual(expected);
  });

  test("reads a fetch body as events arrive, in order, with a default event type of message", async () => {
    const encoder = new TextEncoder();
    const bytes = encoder.encode(`${stream}data: plain\n\n`);
    // Split inside a multi-byte character too: the BOM is 3 bytes.
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(bytes.subarray(0, 1));
        controller.enqueue(bytes.subarray(1, 50));
        controller.enqueue(bytes.subarray(50));
        controller.close();
      },
    });
    const events: SseEvent[] = [];
    for await (const event of readSse(body)) events.push(event);
    expect(events).toEqual([...expected, { id: "1060", event: "message", data: "cut before its blank line\nplain" }]);
  });

  test("a line longer than the bound throws rather than growing without end", () => {
    const parser = new SseParser({ charsMax: 100 });
    expect(() => parser.push(`data: ${"x".repeat(200)}`)).toThrow(SseTooLargeError);
    const data = new SseParser({ charsMax: 100 });
    expect(() => data.push(`${"data: 0123456789\n".repeat(20)}`)).toThrow(SseTooLargeError);
  });

  test("a failed body read ends the reader with the error", async () => {
    let pulls = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        // (An error raised in start() would discard what was queued before it.)
        if (pulls++ === 0) controller.enqueue(new TextEncoder().encode("data: one\n\n"));
        else controller.error(new Error("connection reset"));
      },
    });
    const seen: string[] = [];
    let thrown: unknown;
    try {
      for await (const event of readSse(body)) seen.push(event.data);
    } catch (error) {
      thrown = error;
    }
    expect(seen).toEqual(["one"]);
    expect((thrown as Error).message).toBe("connection reset");
  });
});
