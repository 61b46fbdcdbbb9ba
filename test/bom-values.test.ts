// Proves a value or key whose UTF-8 starts with a byte-order mark (EF BB BF) keeps those bytes wherever
// it crosses JSON or text: transaction results, the client's transaction puts and comparisons, a value's
// text in the client library. A TextDecoder drops a leading BOM unless told not to (found in a code
// review of transactions: the client stored "\uFEFFA" as "A", and a comparison with it failed).
import { beforeAll, expect, test } from "bun:test";
import { createClient } from "../src/client/index.ts";
import { jsonValue } from "../src/lib/json-value.ts";
import { serverClusterForSuite } from "./helpers/server-cluster.ts";

const clusterOf = serverClusterForSuite({ size: 1, dirPrefix: "kv-bom-" });
let url: string;
beforeAll(() => {
  url = clusterOf().node(1).httpUrl;
});

const withBom = new Uint8Array([0xef, 0xbb, 0xbf, 0x41]); // "\uFEFFA" in UTF-8

test("jsonValue keeps a leading U+FEFF", () => {
  expect(jsonValue(withBom)).toBe("\uFEFFA");
});

test("POST /txn gets a stored value that starts with a BOM byte for byte, as GET does", async () => {
  expect((await fetch(`${url}/kv/bom-server`, { method: "PUT", body: withBom })).status).toBe(200);
  expect([...new Uint8Array(await (await fetch(`${url}/kv/bom-server`)).arrayBuffer())]).toEqual([...withBom]);
  const answer = (await (await fetch(`${url}/txn`, { method: "POST", body: JSON.stringify({ success: [{ get: { key: "bom-server" } }] }) })).json()) as {
    results: { get: { value: unknown } }[];
  };
  expect(answer.results[0]!.get.value).toEqual("\uFEFFA");
  const listed = (await (await fetch(`${url}/kv?prefix=bom-server`)).json()) as { items: { value: unknown }[] };
  expect(listed.items[0]!.value).toEqual("\uFEFFA");
});

test("the client's transaction puts and compares bytes that start with a BOM as they are; a value's text keeps it", async () => {
  const kv = createClient({ endpoints: [url] });
  await kv.txn({ success: [{ put: { key: "bom-client", value: withBom } }] });
  const entry = await kv.get("bom-client");
  expect([...entry!.bytes]).toEqual([...withBom]);
  expect(entry!.text).toBe("\uFEFFA");
  const compared = await kv.txn({ compare: [{ key: "bom-client", value: withBom }], success: [{ put: { key: "bom-cmp-ok", value: "1" } }] });
  expect(compared.succeeded).toBe(true);
});
