// Proves a peer transport configured for TLS calls every peer over TLS, whatever scheme its URL
// has: a member recorded with an http URL in a TLS cluster was called in cleartext, the cluster
// token and the log sent to whatever listened there, and its answers taken for the peer's (found
// in a review). And that adding a member refuses a peer URL whose scheme is not the cluster's.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConnectTransport } from "../src/transport/connect-transport.ts";
import { makeTestCertificates } from "./helpers/certs.ts";
import { createMemoryCluster } from "./helpers/memory-cluster.ts";

const scratch = mkdtempSync(join(tmpdir(), "kv-tls-scheme-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

test("a TLS transport calling a peer whose URL is http: opens TLS, and sends no token in the clear", async () => {
  const certs = makeTestCertificates(scratch);
  const tls = { cert: readFileSync(certs.nodeCert, "utf8"), key: readFileSync(certs.nodeKey, "utf8"), ca: readFileSync(certs.caCert, "utf8") };
  // Whatever listens at the address the member was recorded with: it keeps the first bytes it gets.
  let firstBytes: Uint8Array | undefined;
  let arrived: () => void = () => {};
  const got = new Promise<void>((resolve) => (arrived = resolve));
  const listener = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(socket, data) {
        firstBytes ??= new Uint8Array(data);
        arrived();
        socket.end();
      },
    },
  });
  const token = "the-secret-cluster-token-0123456789";
  const handle = createConnectTransport({
    selfId: 1,
    selfHttpUrl: "https://127.0.0.1:1",
    peers: new Map([[9, `http://127.0.0.1:${listener.port}`]]),
    listen: { hostname: "127.0.0.1", port: 0 },
    onMessages: () => {},
    rpcTimeoutMs: 1000,
    log: () => {},
    auth: { clusterId: "0123456789abcdef", clusterToken: token },
    tls,
  });
  try {
    handle.transport.send([{ type: "heartbeat", from: 1, to: 9, term: 3, commit: 0, readContext: "" }]);
    await got;
    const bytes = firstBytes as Uint8Array;
    // A TLS handshake record (content type 22), not an HTTP request line.
    expect(bytes[0]).toBe(0x16);
    expect(Buffer.from(bytes).includes(token)).toBe(false);
  } finally {
    await handle.transport.close();
    listener.stop(true);
  }
});

test("adding a member (POST /members) refuses a peer URL whose scheme is not the cluster's", async () => {
  const cluster = createMemoryCluster();
  await cluster.until(() => cluster.leader() !== undefined);
  const leader = cluster.leader()!;
  // The memory cluster's peers are at mem:// URLs: an http one is another scheme.
  await expect(cluster.drive(leader.addMember!(4, "http://127.0.0.1:7004"))).rejects.toThrow(/peer URL http:\/\/127.0.0.1:7004 is not mem, as this cluster's peers are/);
  const view = await cluster.drive(leader.addMember!(4, "mem://peer-4"));
  expect(view.members.map((member) => member.id)).toContain(4);
});
