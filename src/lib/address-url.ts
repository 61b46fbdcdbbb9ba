/**
 * Whether the URL `text` (parsed as `url`) is only where a node is: a scheme, host and port, without
 * a user, a path, a query or a fragment. A node serves none of those: a member's peer or client URL
 * with one would be stored and sent as it came, and a client endpoint with a path reached no route
 * (a node answers that 404 not_found, which reads as an absent key). `?` and `#` are looked for in
 * the text too, since an empty query or fragment leaves the parsed URL's empty.
 */
export function isAddressOnly(url: URL, text: string): boolean {
  return url.username === "" && url.password === "" && url.pathname === "/" && url.search === "" && url.hash === "" && !/[?#]/.test(text);
}

/** 0.0.0.0 or :: (in any spelling, bracketed or not): where a node listens, never an address to reach it at. */
export function isUnspecifiedHost(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, "");
  return host === "0.0.0.0" || /^[0:]+$/.test(host);
}
