/**
 * A page of keys and values bounded by bytes as well as by count: a listing stops after the item
 * that brings its keys' and values' sizes (a key's counted in UTF-16 units) to the bound or past it,
 * so a page holds at least one item. `GET /kv` bounds its pages so (src/http/app.ts): one page of a
 * hundred 1 MiB values held a leader's loop past its election timeout.
 */
export interface PageItem {
  readonly key: string;
  readonly value: Uint8Array;
}

/** What one item counts toward its page's bound. */
export function itemBytes(item: PageItem): number {
  return item.key.length + item.value.byteLength;
}

/** The size `withinBytes` counts for `items`. */
export function pageBytes(items: readonly PageItem[]): number {
  let bytes = 0;
  for (const item of items) bytes += itemBytes(item);
  return bytes;
}

/** `items` up to the one that brings their size to `bytesMax` or past it. */
export function withinBytes<T extends PageItem>(items: T[], bytesMax: number): T[] {
  let bytes = 0;
  for (let i = 0; i < items.length; i++) {
    bytes += itemBytes(items[i] as T);
    if (bytes >= bytesMax) return items.slice(0, i + 1);
  }
  return items;
}
