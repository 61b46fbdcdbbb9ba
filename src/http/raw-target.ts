/**
 * The request target exactly as the client sent it, still percent-encoded. Keys are decoded from
 * this, not from the router's params, so that `%2F` stays part of one key and nothing is decoded twice.
 */
export interface RawTarget {
  /** The path, still percent-encoded, e.g. `/kv/a%2Fb`. Always starts with `/`. */
  readonly path: string;
  /** The query including its leading `?`, or `""` when the URL has none. */
  readonly search: string;
}

/** Splits an absolute request URL (`request.url`) into its raw path and raw query, dropping any fragment. */
export function rawTarget(url: string): RawTarget {
  // request.url is always absolute here (scheme://authority/path?query); the path begins at the
  // first "/" after the authority. We slice instead of `new URL()` so nothing is re-encoded or decoded.
  const schemeEnd = url.indexOf("://");
  const authorityStart = schemeEnd === -1 ? 0 : schemeEnd + 3;
  const hashIndex = url.indexOf("#", authorityStart);
  const end = hashIndex === -1 ? url.length : hashIndex;
  let pathStart = authorityStart;
  while (pathStart < end && url[pathStart] !== "/" && url[pathStart] !== "?") pathStart += 1;
  const queryIndex = url.indexOf("?", pathStart);
  const pathEnd = queryIndex === -1 || queryIndex > end ? end : queryIndex;
  const path = url.slice(pathStart, pathEnd);
  return {
    path: path.startsWith("/") ? path : `/${path}`,
    search: pathEnd < end ? url.slice(pathEnd, end) : "",
  };
}
