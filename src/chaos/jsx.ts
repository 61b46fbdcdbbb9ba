/**
 * The JSX factory of the HTML report (src/chaos/report.tsx): preact's `h` and `Fragment`, rendered
 * to a string by preact-render-to-string, which escapes every text child and attribute value. Only
 * `dangerouslySetInnerHTML` goes out as is (the report's constant style sheet and script).
 *
 * Preact's own type declarations pull in TypeScript's DOM library (`/// <reference lib="dom" />` in
 * preact's jsx.d.ts), whose fetch and stream types clash with Bun's across the project (every
 * `new Response(bytes)` stops compiling). So the two packages are loaded with `require`, which
 * TypeScript does not follow for types (Bun bundles it into the executable all the same), and the
 * few types the report uses are declared here: elements are `VNode`s, attributes are text.
 */

/** What preact renders: an element, text, a number, nothing, or a list of them. */
export type ComponentChildren = VNode | string | number | boolean | null | undefined | readonly ComponentChildren[];

/** A preact element, opaque to the report. */
export interface VNode {
  readonly __preactVNode: never;
}

/** An element's attributes as the report writes them (SVG names as in SVG: `fill-opacity`, `viewBox`). */
export type Attributes = {
  readonly [name: string]: string | number | boolean | undefined | null | ComponentChildren | { readonly __html: string };
};

type Component<P> = (props: P) => VNode | null;

interface Preact {
  h(type: string | Component<never>, props: Record<string, unknown> | null, ...children: unknown[]): VNode;
  Fragment: Component<{ children?: ComponentChildren }>;
}
interface PreactRenderToString {
  renderToString(vnode: VNode): string;
}

const preact = require("preact") as Preact;
const renderer = require("preact-render-to-string") as PreactRenderToString;

/** The JSX factory (tsconfig.json's `jsxFactory`). */
export const h = preact.h;
/** The JSX fragment (tsconfig.json's `jsxFragmentFactory`). */
export const Fragment = preact.Fragment;

/** Renders an element to HTML; text and attribute values come out escaped. */
export function renderToString(vnode: VNode): string {
  return renderer.renderToString(vnode);
}

// The element types TypeScript checks JSX against, looked up on the factory (`h.JSX`).
// eslint-disable-next-line @typescript-eslint/no-namespace
export declare namespace h {
  namespace JSX {
    type Element = VNode;
    interface ElementChildrenAttribute {
      children: unknown;
    }
    interface IntrinsicElements {
      [name: string]: Attributes;
    }
  }
}
