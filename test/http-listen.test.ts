// Proves the client HTTP API works over a real socket: Bun's server hands the raw path through, so
// percent-encoded keys, raw bytes and the 307 to the leader behave as they do under app.handle.
import { expect, test } from "bun:test";
import { createHttpApp } from "../src/http/app.ts";
import { MemoryKvNode } from "../src/http/memory-kv-node.ts";
import { KvError } from "../src/lib/kv-error.ts";

test("PUT then GET over a real socket, with an encoded key and binary bytes", async () => {
  const node = new MemoryKvNode();
  const app = createHttpApp(node, {}).listen({ port: 0, hostname: "127.0.0.1" });
  try {
    const port = app.server?.port;
    expect(port).toBeNumber();
    const base = `http://127.0.0.1:${port}`;
    const value = Uint8Array.from({ length: 256 }, (_, i) => 255 - i);

    const putResponse = await fetch(`${base}/kv/dir%2Ffile%20%E2%9C%93`, {
      method: "PUT",
      body: value,
      headers: { "content-type": "text/plain" },
    });
    expect(putResponse.status).toBe(200);
    expect(await putResponse.json()).toEqual({ key: "dir/file \u2713", version: 1 });

    const getResponse = await fetch(`${base}/kv/dir/file%20%E2%9C%93?consistency=stale`);
    expect(getResponse.status).toBe(200);
    expect(getResponse.headers.get("x-kv-version")).toBe("1");
    expect(getResponse.headers.get("content-type")).toBe("application/octet-stream");
    expect(new Uint8Array(await getResponse.arrayBuffer())).toEqual(value);
    expect(node.readConsistencies).toEqual(["stale"]);

    const missing = await fetch(`${base}/kv/missing`);
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { error: string }).error).toBe("not_found");

    node.failure = new KvError("not_leader", "follower", { leaderId: 2, leaderUrl: "http://127.0.0.1:1" });
    const redirected = await fetch(`${base}/kv/a%2Fb?ifVersion=0`, { method: "PUT", body: "v", redirect: "manual" });
    expect(redirected.status).toBe(307);
    expect(redirected.headers.get("location")).toBe("http://127.0.0.1:1/kv/a%2Fb?ifVersion=0");
    await redirected.body?.cancel();
  } finally {
    await app.stop();
  }
});
