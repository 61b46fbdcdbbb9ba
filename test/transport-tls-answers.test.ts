// Proves a peer transport with TLS reads a peer's answer under the same bounds as over plain http
// (src/transport/socket-transport.ts): at most 64 MiB, and a protobuf body that would not decode
// into more objects than any peer's answer holds (src/transport/wire-bounds.ts). Before, an https
// answer was read and decoded whole, whatever its size (found in a review).
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RESPONSE_BYTES_MAX } from "../src/lib/http-connection.ts";
import type { Message } from "../src/raft/types.ts";
import { createConnectTransport } from "../src/transport/connect-transport.ts";
import { makeTestCertificates } from "./helpers/certs.ts";

const scratch = mkdtempSync(join(tmpdir(), "kv-tls-answers-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
const certs = makeTestCertificates(scratch);
const tls = { cert: readFileSync(certs.nodeCert, "utf8"), key: readFileSync(certs.nodeKey, "utf8"), ca: readFileSync(certs.caCert, "utf8") };

/** Calls a fake https peer that answers every call with `body`; resolves with what the transport logged of the peer. */
async function callAnsweredWith(body: Uint8Array): Promise<{ logged: string; delivered: Message[] }> {
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: tls.cert, key: tls.key },
    fetch: () => new Response(body, { status: 200, headers: { "content-type": "application/proto" } }),
  });
  let logged: (line: string) => void = () => {};
  const unreachable = new Promise<string>((resolve) => (logged = resolve));
  const delivered: Message[] = [];
  const handle = createConnectTransport({
    selfId: 1,
    selfHttpUrl: "https://127.0.0.1:1",
    peers: new Map([[9, `https://127.0.0.1:${server.port}`]]),
    listen: { hostname: "127.0.0.1", port: 0 },
    onMessages: (messages) => delivered.push(...messages),
    rpcTimeoutMs: 10_000,
    log: (line) => {
      if (line.startsWith("peer 9:")) logged(line);
    },
    tls,
  });
  try {
    handle.transport.send([{ type: "heartbeat", from: 1, to: 9, term: 3, commit: 0, readContext: "" }]);
    return { logged: await unreachable, delivered };
  } finally {
    await handle.transport.close();
    server.stop(true);
  }
}

test("an https answer that would decode into more objects than any peer sends is refused before it is decoded", async () => {
  // SendResponse field 1 (messages), 300,000 empty ones: 600 KB on the wire, 300,000 objects decoded.
  const body = new Uint8Array(600_000);
  for (let i = 0; i < body.length; i += 2) body[i] = 0x0a;
  const { logged, delivered } = await callAnsweredWith(body);
  expect(logged).toContain("parse binary");
  expect(logged).toContain("objects");
  expect(delivered).toEqual([]);
});

test("an https answer over 64 MiB is refused", async () => {
  const { logged, delivered } = await callAnsweredWith(new Uint8Array(RESPONSE_BYTES_MAX + 1));
  expect(logged).toContain(`over ${RESPONSE_BYTES_MAX}`);
  expect(delivered).toEqual([]);
});
