/**
 * The kv client library, `import { createClient } from "kv/client"`:
 *
 * ```ts
 * const kv = createClient({ endpoints: ["http://127.0.0.1:8001", "http://127.0.0.1:8002"] });
 * const { version } = await kv.put("greeting", "hello");
 * const entry = await kv.get("greeting"); // { key, version, bytes, text } or null
 * for await (const page of kv.list("greet")) for (const item of page.items) console.log(item.key, item.text);
 * ```
 *
 * It talks to nodes over HTTP only. Watches, leases, locks and elections hang off the client too:
 * `client.watch({ prefix })`, `client.leases.grant(ttlMs)`, `client.lock(name)`, `client.elect(name,
 * value)`, `client.observe(name)` (docs/client.md is the guide).
 */
export {
  createClient,
  CLIENT_TIMEOUT_MS_DEFAULT,
  type ClientOptions,
  type DeleteOptions,
  type CallOptions,
  type DeletePrefixOptions,
  type DeletePrefixResult,
  type DeleteResult,
  type GetOptions,
  type KvClient,
  type ListOptions,
  type ListPage,
  type Member,
  type MembersView,
  type MembershipApi,
  type NewMember,
  type NodeStatus,
  type PutOptions,
  type PutResult,
  type RawAnswer,
  type RawRequest,
  type ReadConsistency,
  type StateHash,
  type TxnCompare,
  type TxnCompareOp,
  type TxnOperation,
  type TxnOperationResult,
  type TxnRequest,
  type TxnResult,
  type TxnValue,
} from "./client.ts";
export { KvClientError, UnknownOutcomeError, type ClientSideCode } from "./errors.ts";
export type { LeaseGrant, LeaseId, LeaseInfo, LeaseKeeper, LeaseKeepOptions, LeasePage, LeaseRevoked, LeasesApi, LeaseSummary } from "./leases.ts";
export type { Leadership, LockHandle, LockOptions } from "./lock.ts";
export type { WatchDeleteEvent, WatchEvent, WatchOptions, WatchProgressEvent, WatchPutEvent, WatchSelector } from "./watch.ts";
export { answerOutcome, type AnswerOutcome } from "./outcome.ts";
export type { JsonValue, KvEntry, ValueInput } from "./values.ts";
export { compareReplicas, judgeHashes, type HashAnswer, type ReplicaCheck, type ReplicaVerdict } from "./replicas.ts";
