import { answerOutcome, errorCodeOf } from "../client/outcome.ts";
import { buildRequest, responseHeader, sendOnce } from "../lib/http-connection.ts";

/**
 * What a chaos client learned from one request. `fail` means it certainly did not take effect (a
 * refusal before anything was proposed: 307 `not_leader`, 503 `no_leader`, 4xx); `unknown` means
 * it may or may not have (no answer, a cut connection, 503 `timeout`).
 */
export type Outcome =
  | { readonly kind: "ok"; readonly status: number; readonly body: Uint8Array; readonly version: number | undefined }
  | {
      readonly kind: "fail";
      readonly status: number;
      readonly error: string;
      readonly location: string | undefined;
      /** On 409 `version_mismatch`: the version the answer says the key was at (0: absent). */
      readonly keyVersion?: number;
    }
  | { readonly kind: "unknown"; readonly reason: string };

/** An HTTP client for one kv node that never follows redirects and classifies every answer. */
export async function request(
  baseUrl: string,
  method: "GET" | "PUT" | "DELETE" | "POST",
  path: string,
  body?: Uint8Array | string,
  timeoutMs = 3_000,
  headers: Readonly<Record<string, string>> = {},
): Promise<Outcome> {
  let response: Response;
  try {
    response = await fetch(`${baseUrl}${path}`, {
      method,
      body,
      redirect: "manual",
      signal: AbortSignal.timeout(timeoutMs),
      headers: method === "POST" ? { "content-type": "application/json", ...headers } : headers,
    });
  } catch (error) {
    return { kind: "unknown", reason: error instanceof Error ? error.message : String(error) };
  }
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await response.arrayBuffer());
  } catch (error) {
    return { kind: "unknown", reason: `body cut: ${error instanceof Error ? error.message : String(error)}` };
  }
  return classifyResponse(method, response.status, (name) => response.headers.get(name), bytes);
}

/** Classifies a complete HTTP answer from a kv node (shared by `request` and the raw-socket client). */
export function classifyResponse(
  method: "GET" | "PUT" | "DELETE" | "POST",
  status: number,
  header: (name: string) => string | null,
  bytes: Uint8Array,
): Outcome {
  if (status === 200) {
    const versionHeader = header("x-kv-version");
    let version = versionHeader === null ? undefined : Number(versionHeader);
    if (version === undefined && method !== "GET") {
      try {
        version = (JSON.parse(new TextDecoder().decode(bytes)) as { version?: number }).version;
      } catch {
        // not JSON
      }
    }
    return { kind: "ok", status: 200, body: bytes, version };
  }
  const code = errorCodeOf(bytes);
  const error = code ?? `http_${status}`;
  // The rule is the client library's (src/client/outcome.ts), so chaos judges answers as kv's client
  // retries them: 503 `timeout` (proposed, commit not seen in time; also what a stopping node answers
  // the writes it had proposed) and any other 5xx (a bug on the node's side) are unknown; 503
  // `no_leader` and `unavailable` (refused before proposing) and `proposal_dropped` (replaced by
  // another leader's entry: it never applies), 307 and 4xx certainly did not take effect.
  switch (answerOutcome(method, status, code)) {
    case "unknown":
      return { kind: "unknown", reason: code === "timeout" ? "timeout" : `${status} ${error}` };
    case "done":
      return { kind: "ok", status: 404, body: new Uint8Array(0), version: undefined }; // a GET of an absent key
    case "refused":
      return { kind: "fail", status, error, location: header("location") ?? undefined, ...(error === "version_mismatch" ? keyVersionOf(bytes) : {}) };
  }
}

/** The key's version a 409 `version_mismatch` body names, when it names one. */
function keyVersionOf(bytes: Uint8Array): { keyVersion?: number } {
  try {
    const version = (JSON.parse(new TextDecoder().decode(bytes)) as { version?: unknown }).version;
    return typeof version === "number" && Number.isSafeInteger(version) && version >= 0 ? { keyVersion: version } : {};
  } catch {
    return {};
  }
}

/** A request put on its own socket at once: `sent` resolves once it is written, `outcome` once judged. */
export interface RawRequest {
  /** Resolves true once the whole request is in the kernel's hands, false if that failed. */
  readonly sent: Promise<boolean>;
  readonly outcome: Promise<Outcome>;
}

const utf8 = new TextEncoder();

/**
 * Sends one request over a fresh TCP connection opened now, through kv's raw HTTP client
 * (`sendOnce`, src/lib/http-connection.ts): the pause scenario writes requests into a stopped
 * node's socket before SIGCONT. `path` must be ASCII (kvPath percent-encodes). An answer is judged
 * as `request` judges it; no answer, a cut or garbled one, or none within `timeoutMs` is unknown.
 */
export function sendRaw(baseUrl: string, method: "GET" | "PUT", path: string, body: string | undefined, timeoutMs: number): RawRequest {
  const payload = method === "PUT" ? utf8.encode(body ?? "") : undefined;
  const bytes = buildRequest(method, path, new URL(baseUrl).host, payload, payload === undefined ? undefined : "application/octet-stream");
  const { sent, response } = sendOnce(baseUrl, bytes, timeoutMs);
  const outcome = response.then(
    (answer) => classifyResponse(method, answer.status, (name) => responseHeader(answer, name) ?? null, answer.body),
    (error: unknown): Outcome => ({ kind: "unknown", reason: error instanceof Error ? error.message : String(error) }),
  );
  return { sent, outcome };
}

/** The text of a successful GET, or null when the key is absent. */
export function readValue(outcome: Outcome): string | null | undefined {
  if (outcome.kind !== "ok") return undefined;
  return outcome.status === 404 ? null : new TextDecoder().decode(outcome.body);
}

/** A short description of an outcome for evidence lines: `ok "v1"`, `307 not_leader`, `unknown (timeout)`. */
export function describeOutcome(outcome: Outcome): string {
  switch (outcome.kind) {
    case "ok": {
      if (outcome.status === 404) return "ok: absent (404)";
      return `ok: ${JSON.stringify(new TextDecoder().decode(outcome.body).slice(0, 80))}`;
    }
    case "fail":
      return `refused: ${outcome.status} ${outcome.error}`;
    case "unknown":
      return `unknown (${outcome.reason})`;
  }
}

/** How many of `outcomes` were acknowledged, refused and unknown. */
export function tally(outcomes: readonly Outcome[]): { acknowledged: number; refused: number; unknown: number } {
  return {
    acknowledged: outcomes.filter((o) => o.kind === "ok").length,
    refused: outcomes.filter((o) => o.kind === "fail").length,
    unknown: outcomes.filter((o) => o.kind === "unknown").length,
  };
}
