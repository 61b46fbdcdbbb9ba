// Proves `kv serve --join`'s asking (src/server/join.ts) against a cluster answered by a stub: an
// addition already applied (member_exists) is confirmed from GET /members, and an answer from a node
// still behind the leader (no configuration index yet, or without the new node) is asked again, not
// taken as a refusal.
import { afterAll, expect, test } from "bun:test";
import { createLogger } from "../src/lib/logger.ts";
import { joinProof } from "../src/lib/join-proof.ts";
import { joinCluster } from "../src/server/join.ts";

const servers: { stop(force: boolean): unknown }[] = [];
afterAll(() => {
  for (const server of servers) server.stop(true);
});

const voters = [1, 2, 3].map((id) => ({ id, peerUrl: `http://127.0.0.1:500${id}`, httpUrl: `http://127.0.0.1:800${id}`, role: "voter" }));

/** A cluster stub: every addition is `member_exists` (`message`), and GET /members answers `members()`. */
function memberExistsStub(message: string, members: (url: URL) => unknown): string {
  const server = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    fetch(request) {
      const path = new URL(request.url).pathname;
      if (request.method === "POST" && path === "/members") return Response.json({ error: "member_exists", message }, { status: 409 });
      if (request.method === "GET" && path === "/members") return Response.json(members(new URL(request.url)));
      return Response.json({ error: "not_found", message: path }, { status: 404 });
    },
  });
  servers.push(server);
  return `http://127.0.0.1:${server.port}`;
}

/** Node 4 at http://127.0.0.1:5004 joins through `endpoint`. */
function joinAsNode4(endpoint: string, write?: (line: string) => void) {
  return joinCluster({
    endpoints: [endpoint],
    id: 4,
    peerUrl: "http://127.0.0.1:5004",
    httpUrl: undefined,
    authToken: undefined,
    clusterToken: undefined,
    timeoutMs: 10_000,
    logger: createLogger(4, write === undefined ? "error" : "warn", { format: "json", ...(write === undefined ? {} : { write }) }),
  });
}

test("member_exists, then a members list from a node behind the leader, then the current one: the join asks again and succeeds", async () => {
  const answers = [
    { members: voters, leaderId: 1, configIndex: 0 },
    { members: voters, leaderId: 1, configIndex: 5 },
    { members: [...voters, { id: 4, peerUrl: "http://127.0.0.1:5004", httpUrl: "", role: "learner" }], leaderId: 1, configIndex: 7 },
  ];
  let listed = 0;
  const endpoint = memberExistsStub("node 4 is already a learner", () => answers[Math.min(listed++, answers.length - 1)]);
  const answer = await joinAsNode4(endpoint);
  expect(answer.configIndex).toBe(7);
  expect(answer.learners).toEqual([4]);
  expect(listed).toBe(3);
});

test("after member_exists, the members are read linearizably, and the index listed for this server then taken: it is its own addition's (found in a black-box review: a member added with kv member add before its --join never learned it, so it sent none on its calls)", async () => {
  const asked: (string | null)[] = [];
  const members = [...voters.map((voter) => ({ ...voter, addedIndex: 0 })), { id: 4, peerUrl: "http://127.0.0.1:5004", httpUrl: "", role: "learner", addedIndex: 30 }];
  const endpoint = memberExistsStub("node 4 is already a learner", (url) => {
    asked.push(url.searchParams.get("consistency"));
    return { members, leaderId: 1, configIndex: 35, ...(url.searchParams.get("consistency") === "linearizable" ? { consistency: "linearizable" } : {}) };
  });
  const answer = await joinAsNode4(endpoint);
  expect(asked).toEqual(["linearizable"]);
  expect(answer.addresses.map((address) => [address.id, address.addedIndex])).toEqual([
    [1, 0],
    [2, 0],
    [3, 0],
    [4, 30],
  ]);
});

test("after member_exists, from a node that did not read the members linearizably (0.8.0 and earlier ignore the ask), the index it lists for this server is not taken (it may be behind, listing an earlier addition of the id: peers would refuse this server as an older process of it; found in a review); the others' are", async () => {
  const members = [...voters.map((voter) => ({ ...voter, addedIndex: 0 })), { id: 4, peerUrl: "http://127.0.0.1:5004", httpUrl: "", role: "learner", addedIndex: 30 }];
  const endpoint = memberExistsStub("node 4 is already a learner", () => ({ members, leaderId: 1, configIndex: 35 }));
  const answer = await joinAsNode4(endpoint);
  expect(answer.addresses.map((address) => [address.id, address.addedIndex])).toEqual([
    [1, 0],
    [2, 0],
    [3, 0],
    [4, undefined],
  ]);
});

test("member_exists for a voter at this address is refused: a voter's data dir was emptied, and it must be removed before it joins again (found by a code review)", async () => {
  // configIndex 0: a cluster whose configuration never changed since its bootstrap (the join retried on it until its timeout).
  for (const configIndex of [5, 0]) {
    const endpoint = memberExistsStub("node 3 is already a voter", () => ({ members: voters, leaderId: 1, configIndex }));
    const joining = joinCluster({
      endpoints: [endpoint],
      id: 3,
      peerUrl: "http://127.0.0.1:5003",
      httpUrl: undefined,
      authToken: undefined,
      clusterToken: undefined,
      timeoutMs: 3_000,
      logger: createLogger(3, "error", { format: "json" }),
    });
    await expect(joining).rejects.toThrow(/already a voter.*kv member remove 3/s);
  }
});

test("a join sent to an address that answers a bare 404 (a peer port) says --join takes a client URL; a kv 404 is the cluster's refusal (found in a black-box review: it said only '404 HTTP 404 from ...')", async () => {
  const bare = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("Not Found", { status: 404 }) });
  servers.push(bare);
  await expect(joinAsNode4(`http://127.0.0.1:${bare.port}`)).rejects.toThrow(`HTTP 404 from http://127.0.0.1:${bare.port}, without kv's JSON: is it a peer URL, or behind a proxy's other path? --join takes a member's client URL (what its --listen-http or --advertise-http serves)`);
  const kv = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => Response.json({ error: "not_found", message: "no such route" }, { status: 404 }) });
  servers.push(kv);
  await expect(joinAsNode4(`http://127.0.0.1:${kv.port}`)).rejects.toThrow("the cluster refused the join: 404 no such route");
});

test("a join carries a proof of its cluster token; a leader of a release before it, which refuses the unknown field, is asked again without it", async () => {
  const bodies: Record<string, unknown>[] = [];
  const server = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    async fetch(request) {
      const body = (await request.json()) as Record<string, unknown>;
      bodies.push(body);
      if ("clusterTokenProof" in body) {
        return Response.json({ error: "bad_request", message: `the body {"id", "peerUrl", "httpUrl"} has an unknown field 'clusterTokenProof' (expected 'id', 'peerUrl', 'httpUrl')` }, { status: 400 });
      }
      return Response.json({ members: [...voters, { id: 4, role: "learner", peerUrl: "http://127.0.0.1:5004" }], leaderId: 1, configIndex: 9 });
    },
  });
  servers.push(server);
  const lines: string[] = [];
  const answer = await joinAsNode4(`http://127.0.0.1:${server.port}`, (line) => lines.push(line));
  expect(answer.configIndex).toBe(9);
  expect(bodies).toEqual([
    { id: 4, peerUrl: "http://127.0.0.1:5004", clusterTokenProof: joinProof(undefined, 4, "http://127.0.0.1:5004") },
    { id: 4, peerUrl: "http://127.0.0.1:5004" },
  ]);
  // Said, as its token went unchecked (found in a black-box review of a rolling upgrade: a joiner
  // with a wrong token was recorded by a 0.10.0 leader, and could never connect, without a word).
  expect(lines.some((line) => line.includes("does not check a joiner's cluster token"))).toBe(true);
});

test("a join the cluster refuses 401 says which flag the joiner needs: the cluster's --auth-token, or the right one (found in a black-box walkthrough: the 401's own words only, and no doc said the joiner needs the client token)", async () => {
  const server = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => Response.json({ error: "unauthenticated", message: "this node requires a bearer token: send Authorization: Bearer <token>" }, { status: 401 }) });
  servers.push(server);
  const endpoint = `http://127.0.0.1:${server.port}`;
  await expect(joinAsNode4(endpoint)).rejects.toThrow("start this node with the cluster's --auth-token (or --auth-token-file, or $KV_AUTH_TOKEN): its join asks through the client API");
  const withToken = joinCluster({
    endpoints: [endpoint],
    id: 4,
    peerUrl: "http://127.0.0.1:5004",
    httpUrl: undefined,
    authToken: "not-the-cluster-token-0123",
    clusterToken: undefined,
    timeoutMs: 3_000,
    logger: createLogger(4, "error", { format: "json" }),
  });
  await expect(withToken).rejects.toThrow("the --auth-token this node was given is not the cluster's");
});
