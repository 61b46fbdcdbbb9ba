// Measures the raw HTTP fold A B A B: kv chaos's own response parser (A,
// test/bench/hand-written/raw-http.ts) against src/lib/http-connection.ts's parseResponse plus the
// same classification (B, what src/chaos/client.ts sendRaw does now), on a kv 200 answer with a
// 100 B value and on a chunked 307. Usage: bun test/bench/raw-http-fold.ts [--rounds 2] [--scale 1]
import { classifyResponse } from "../../src/chaos/client.ts";
import { parseResponse, responseHeader } from "../../src/lib/http-connection.ts";
import { parseResponse as parseHandWritten } from "./hand-written/raw-http.ts";
import { runMicro } from "./ab-micro.ts";

const value = "x".repeat(100);
const answers = [
  { label: "200 with a 100 B value", method: "GET" as const, text: `HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Kv-Version: 12\r\nDate: Fri, 04 Dec 2026 03:00:00 GMT\r\nContent-Length: ${value.length}\r\n\r\n${value}` },
  {
    label: "chunked 307 not_leader",
    method: "PUT" as const,
    text: `HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:8002/kv/k\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n16\r\n{"error":"not_leader"}\r\n0\r\n\r\n`,
  },
];

await runMicro(
  answers.map(({ label, method, text }) => {
    const bytes = Buffer.from(text, "latin1");
    return {
      label: `parse + classify, ${label}`,
      operations: 500_000,
      a: {
        name: "chaos raw-http",
        run: (operations: number) => {
          let last: unknown;
          for (let i = 0; i < operations; i++) last = parseHandWritten(method, bytes);
          return last;
        },
      },
      b: {
        name: "lib http-connection",
        run: (operations: number) => {
          let last: unknown;
          for (let i = 0; i < operations; i++) {
            const parsed = parseResponse(bytes);
            if (parsed === undefined) throw new Error("incomplete");
            const answer = parsed.response;
            last = classifyResponse(method, answer.status, (name) => responseHeader(answer, name) ?? null, answer.body);
          }
          return last;
        },
      },
    };
  }),
);
