// Large write bodies are read a bounded number of bytes at a time (src/http/body-admission.ts):
// the bound, the order, the one body larger than the bound, the wait's limit, and what counts.
import { describe, expect, test } from "bun:test";
import { BodyAdmission, bodyBytesToAdmit } from "../src/http/body-admission.ts";
import { KvError } from "../src/lib/kv-error.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Whether `promise` has settled once the queued callbacks ran. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 5; i++) await Promise.resolve();
  return done;
}

describe("BodyAdmission", () => {
  test("small bodies pass at once and count nothing", async () => {
    const admission = new BodyAdmission(1 * MiB, 64 * KiB, 60_000);
    const held = await admission.admit(1 * MiB);
    expect(await admission.admit(64 * KiB - 1)).toBeUndefined();
    expect(admission.admittedBytes()).toBe(1 * MiB);
    held?.();
    expect(admission.admittedBytes()).toBe(0);
  });

  test("large bodies are admitted while they fit; the next waits for a release, then goes", async () => {
    const admission = new BodyAdmission(3 * MiB, 64 * KiB, 60_000);
    const releases = await Promise.all([admission.admit(1 * MiB), admission.admit(1 * MiB), admission.admit(1 * MiB)]);
    expect(admission.admittedBytes()).toBe(3 * MiB);
    const fourth = admission.admit(1 * MiB);
    expect(await settled(fourth)).toBe(false);
    expect(admission.waitingCount()).toBe(1);
    releases[1]?.();
    const release = await fourth;
    expect(admission.admittedBytes()).toBe(3 * MiB);
    expect(admission.waitingCount()).toBe(0);
    // Releasing twice gives back once.
    releases[1]?.();
    expect(admission.admittedBytes()).toBe(3 * MiB);
    for (const r of [releases[0], releases[2], release]) r?.();
    expect(admission.admittedBytes()).toBe(0);
  });

  test("first come, first served: a small large body waits behind a bigger one that does not fit yet", async () => {
    const admission = new BodyAdmission(2 * MiB, 64 * KiB, 60_000);
    const first = await admission.admit(1 * MiB);
    const big = admission.admit(2 * MiB);
    const small = admission.admit(128 * KiB);
    expect(await settled(big)).toBe(false);
    expect(await settled(small)).toBe(false); // it would fit, but it came later
    first?.();
    const bigRelease = await big;
    expect(await settled(small)).toBe(false);
    bigRelease?.();
    (await small)?.();
    expect(admission.admittedBytes()).toBe(0);
  });

  test("a body larger than the bound goes alone, once nothing else is admitted", async () => {
    const admission = new BodyAdmission(1 * MiB, 64 * KiB, 60_000);
    const small = await admission.admit(100 * KiB);
    const huge = admission.admit(4 * MiB);
    expect(await settled(huge)).toBe(false);
    small?.();
    const release = await huge;
    expect(admission.admittedBytes()).toBe(4 * MiB);
    const next = admission.admit(100 * KiB);
    expect(await settled(next)).toBe(false);
    release?.();
    (await next)?.();
  });

  test("a body that waits past the limit is refused as overloaded (not read: safe to retry), and the ones behind it that fit go", async () => {
    const admission = new BodyAdmission(2 * MiB, 64 * KiB, 30);
    const held = await admission.admit(1 * MiB);
    const big = admission.admit(2 * MiB); // cannot fit while `held` is admitted
    const error = await big.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(KvError);
    expect((error as KvError).code).toBe("overloaded");
    expect((error as KvError).message).toContain("retrying is safe");
    expect(admission.waitingCount()).toBe(0);
    // With the refused one gone from the head of the line, one that fits goes at once.
    const fits = await admission.admit(1 * MiB);
    expect(admission.admittedBytes()).toBe(2 * MiB);
    fits?.();
    held?.();
  });

  test("a waiter whose client hung up leaves the line at once, and the one behind it that fits goes", async () => {
    const admission = new BodyAdmission(2 * MiB, 64 * KiB, 60_000);
    const held = await admission.admit(1 * MiB);
    const hangUp = new AbortController();
    const gone = admission.admit(2 * MiB, hangUp.signal); // first in line, cannot fit yet
    const behind = admission.admit(1 * MiB); // fits, but came later
    expect(await settled(behind)).toBe(false);
    expect(admission.waitingCount()).toBe(2);
    hangUp.abort();
    const error = await gone.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(KvError);
    (await behind)?.();
    expect(admission.waitingCount()).toBe(0);
    // A client already gone never waits, nor counts.
    const goneBefore = new AbortController();
    goneBefore.abort();
    expect(await settled(admission.admit(1 * MiB, goneBefore.signal).catch(() => undefined))).toBe(true);
    expect(admission.admittedBytes()).toBe(1 * MiB);
    held?.();
    // A waiter admitted before its client hung up keeps its share until released.
    const late = new AbortController();
    const admitted = await admission.admit(1 * MiB, late.signal);
    late.abort();
    expect(admission.admittedBytes()).toBe(1 * MiB);
    admitted?.();
    expect(admission.admittedBytes()).toBe(0);
  });
});

describe("bodyBytesToAdmit", () => {
  const request = (headers: Record<string, string>, body: string | null = "x") => new Request("http://localhost/kv/k", { method: "PUT", headers, body });

  test("a declared Content-Length counts as it is", () => {
    expect(bodyBytesToAdmit(request({ "content-length": "1" }), 1 * MiB)).toBe(1);
  });

  test("a body without Content-Length counts as the largest allowed; no body counts nothing", () => {
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue(new Uint8Array(1));
        controller.close();
      },
    });
    const chunked = new Request("http://localhost/kv/k", { method: "PUT", body: stream, duplex: "half" } as RequestInit);
    expect(chunked.headers.get("content-length")).toBeNull();
    expect(bodyBytesToAdmit(chunked, 1 * MiB)).toBe(1 * MiB);
    expect(bodyBytesToAdmit(new Request("http://localhost/kv/k", { method: "PUT" }), 1 * MiB)).toBe(0);
  });

  test("a body refused before it is read (malformed or over the limit) waits for nothing", () => {
    expect(bodyBytesToAdmit(request({ "content-length": "12abc" }), 1 * MiB)).toBe(0);
    expect(bodyBytesToAdmit(request({ "content-length": String(2 * MiB) }), 1 * MiB)).toBe(0);
  });
});
