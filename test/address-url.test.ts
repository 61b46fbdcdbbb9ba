// Proves isUnspecifiedHost, which refuses a member's URL or a joiner's --listen-peer that names
// where a node listens (0.0.0.0, ::) rather than where others reach it: every spelling of those two
// is caught, and no other host is (a pattern over `[::1]:2380` once took IPv6 loopback for ::).
import { expect, test } from "bun:test";
import { isUnspecifiedHost } from "../src/lib/address-url.ts";
import { parseHostPort } from "../src/cli/usage-error.ts";

test("0.0.0.0 and :: in any spelling are unspecified; loopback, mapped and named hosts are not", () => {
  for (const host of ["0.0.0.0", "::", "[::]", "0:0:0:0:0:0:0:0", "[0:0::0]", "::0"]) expect([host, isUnspecifiedHost(host)]).toEqual([host, true]);
  for (const host of ["::1", "[::1]", "0:0:0:0:0:0:0:1", "::ffff:10.0.0.1", "127.0.0.1", "10.0.0.0", "node-0", "0.0.0.1"]) expect([host, isUnspecifiedHost(host)]).toEqual([host, false]);
});

test("as kv serve reads --listen-peer: the host it parses, not the text around it", () => {
  for (const [listen, unspecified] of [["[::1]:2380", false], ["[0:0:0:0:0:0:0:1]:2380", false], ["[::ffff:10.0.0.1]:2380", false], ["[::]:2380", true], ["0.0.0.0:2380", true]] as const) {
    expect([listen, isUnspecifiedHost(parseHostPort("listen-peer", listen).hostname)]).toEqual([listen, unspecified]);
  }
});
