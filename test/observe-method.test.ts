// Proves observeMethod (the storage metrics' timer) reports each call of the one method it wraps,
// including calls that throw and, for a method returning a promise, only once the promise settles.
import { expect, test } from "bun:test";
import { observeMethod } from "../src/lib/observe-method.ts";

class Disk {
  writes = 0;
  write(bytes: number): number {
    if (bytes < 0) throw new RangeError("negative");
    this.writes += bytes;
    return this.writes;
  }
  sync(settle: Promise<void>): Promise<void> {
    return settle;
  }
}

test("a synchronous method is timed per call, also when it throws; other methods read through", () => {
  const seen: number[] = [];
  const disk = new Disk();
  const observed = observeMethod(disk, "write", (durationS, [bytes]) => {
    expect(durationS).toBeGreaterThanOrEqual(0);
    seen.push(bytes);
  });
  expect(observed.write(3)).toBe(3);
  expect(() => observed.write(-1)).toThrow(RangeError);
  expect(seen).toEqual([3, -1]);
  expect(observed.writes).toBe(3);
  expect(disk.writes).toBe(3);
});

test("a method returning a promise is reported when the promise settles, with its outcome kept", async () => {
  let reports = 0;
  const observed = observeMethod(new Disk(), "sync", () => reports++);
  let finish!: () => void;
  const pending = observed.sync(new Promise<void>((resolve) => (finish = resolve)));
  await Promise.resolve();
  expect(reports).toBe(0);
  finish();
  await pending;
  expect(reports).toBe(1);
  await expect(observed.sync(Promise.reject(new Error("EIO")))).rejects.toThrow("EIO");
  expect(reports).toBe(2);
});
