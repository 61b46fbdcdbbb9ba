// Proves the client library resolves through the package's own name ("kv/client", package.json "exports").
import { expect, test } from "bun:test";
import { createClient, KvClientError, UnknownOutcomeError } from "kv/client";

test('import { createClient } from "kv/client" resolves to src/client and builds a client', () => {
  const client = createClient({ endpoints: "http://127.0.0.1:1/, http://127.0.0.1:2" });
  expect(client.endpoints).toEqual(["http://127.0.0.1:1", "http://127.0.0.1:2"]);
  expect(() => createClient({ endpoints: [] })).toThrow(KvClientError);
  expect(new UnknownOutcomeError("m", "k", []).idempotencyKey).toBe("k");
});
