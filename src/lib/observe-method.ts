/**
 * Times one method of an object without changing the object or its class: a Proxy that forwards
 * everything, and reports how long each call of `method` took. For metrics on components owned
 * elsewhere (the storage's save, for the fsync histogram).
 */

/**
 * Returns a view of `target` whose `method` reports each call's duration in seconds (and its
 * arguments) to `observe`, also when it throws; for a method that returns a promise, the duration
 * runs until the promise settles. Every other property reads through unchanged; methods are bound
 * to `target`, so they run exactly as on the object itself.
 */
export function observeMethod<T extends object, K extends keyof T>(
  target: T,
  method: K,
  observe: (durationS: number, args: T[K] extends (...args: infer A) => unknown ? A : never) => void,
): T {
  const original = target[method];
  if (typeof original !== "function") throw new TypeError(`${String(method)} is not a method`);
  const timed = (...args: unknown[]) => {
    const startedMs = performance.now();
    const report = () => observe((performance.now() - startedMs) / 1000, args as never);
    let result: unknown;
    try {
      result = (original as (...a: unknown[]) => unknown).apply(target, args);
    } catch (error) {
      report();
      throw error;
    }
    if (result instanceof Promise) return result.finally(report);
    report();
    return result;
  };
  const bound = new Map<PropertyKey, unknown>();
  return new Proxy(target, {
    get(object, property) {
      if (property === method) return timed;
      const value: unknown = Reflect.get(object, property, object);
      if (typeof value !== "function") return value;
      let fn = bound.get(property);
      if (fn === undefined) {
        fn = (value as (...a: unknown[]) => unknown).bind(object);
        bound.set(property, fn);
      }
      return fn;
    },
  });
}
