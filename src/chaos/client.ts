/** What a chaos client learned from one request: the outcome is unknown when the answer never came. */
export type Outcome =
  | { readonly kind: "ok"; readonly status: number; readonly body: Uint8Array; readonly version: number | undefined }
  | { readonly kind: "fail"; readonly status: number; readonly error: string; readonly location: string | undefined }
  | { readonly kind: "unknown"; readonly reason: string };

/** An HTTP client for one kv node that never follows redirects and classifies every answer. */
export async function request(
  baseUrl: string,
  method: "GET" | "PUT" | "DELETE",
  path: string,
  body?: Uint8Array | string,
  timeoutMs = 3_000,
): Promise<Outcome> {
  let response: Response;
  try {
    response = await fetch(`${baseUrl}${path}`, {
      method,
      body,
      redirect: "manual",
      signal: AbortSignal.timeout(timeoutMs),
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
  if (response.status === 200) {
    const header = response.headers.get("x-kv-version");
    let version = header === null ? undefined : Number(header);
    if (version === undefined && method !== "GET") {
      try {
        version = (JSON.parse(new TextDecoder().decode(bytes)) as { version?: number }).version;
      } catch {
        // not JSON
      }
    }
    return { kind: "ok", status: 200, body: bytes, version };
  }
  let error = `http_${response.status}`;
  try {
    error = (JSON.parse(new TextDecoder().decode(bytes)) as { error?: string }).error ?? error;
  } catch {
    // not JSON
  }
  // A 503 "timeout" means the write was proposed and may still commit: its outcome is unknown.
  if (error === "timeout") return { kind: "unknown", reason: "timeout" };
  if (response.status === 404 && method === "GET") return { kind: "ok", status: 404, body: new Uint8Array(0), version: undefined };
  return { kind: "fail", status: response.status, error, location: response.headers.get("location") ?? undefined };
}

/** The text of a successful GET, or null when the key is absent. */
export function readValue(outcome: Outcome): string | null | undefined {
  if (outcome.kind !== "ok") return undefined;
  return outcome.status === 404 ? null : new TextDecoder().decode(outcome.body);
}
