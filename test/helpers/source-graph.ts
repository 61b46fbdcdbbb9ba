/**
 * The sources under src/ as the TypeScript compiler sees them, for the house rules
 * (test/architecture.test.ts): every module a file reaches (static, `export … from`, `import type`,
 * `import("…")` and `require("…")`, resolved as the compiler resolves them, so an import without
 * its `.ts` counts), and the checker, to tell what a name really refers to (a global or a local
 * binding; `RawNode.ready` or another class's `ready`) however it is written (`raw["ready"]()`, an
 * alias, a destructuring).
 */
import { readdirSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import ts from "typescript";

export const SRC = join(import.meta.dir, "..", "..", "src");

/** The .ts/.tsx files under `dir` (tests excluded). */
export function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return /\.tsx?$/.test(entry.name) && !/\.test\.tsx?$/.test(entry.name) ? [path] : [];
  });
}

/** A module a file names: as written, and the file it resolves to (undefined for bun:, node: and packages). */
export interface ModuleReference {
  readonly specifier: string;
  /** Absolute path of the source file inside src/, when it is one. */
  readonly file: string | undefined;
  /** `import(x)` or `require(x)` whose argument is not a string literal: where it leads cannot be known. */
  readonly computed: boolean;
}

export interface SourceGraph {
  readonly program: ts.Program;
  readonly checker: ts.TypeChecker;
  /** The source file at `path` (absolute). */
  sourceFile(path: string): ts.SourceFile;
  /** Every module `path` refers to. */
  references(path: string): readonly ModuleReference[];
  /** `path` relative to src/, with forward slashes. */
  name(path: string): string;
}

let built: SourceGraph | undefined;

/** The graph of src/ (built once per test process: about as long as a typecheck of src). */
export function sourceGraph(): SourceGraph {
  if (built !== undefined) return built;
  const configPath = join(SRC, "..", "tsconfig.json");
  const config = ts.readConfigFile(configPath, ts.sys.readFile);
  const options = ts.parseJsonConfigFileContent(config.config, ts.sys, dirname(configPath)).options;
  const files = sourceFiles(SRC).filter((file) => !file.startsWith(join(SRC, "gen")));
  const program = ts.createProgram({ rootNames: files, options });
  const checker = program.getTypeChecker();
  const references = new Map<string, ModuleReference[]>();
  const resolve = (specifier: string, from: string): string | undefined => {
    const resolved = ts.resolveModuleName(specifier, from, options, ts.sys).resolvedModule?.resolvedFileName;
    if (resolved === undefined || resolved.endsWith(".d.ts") || !resolved.startsWith(SRC)) return undefined;
    return resolved;
  };
  const referencesOf = (path: string): ModuleReference[] => {
    const cached = references.get(path);
    if (cached !== undefined) return cached;
    const found: ModuleReference[] = [];
    const add = (specifier: ts.Expression | undefined) => {
      if (specifier !== undefined && ts.isStringLiteralLike(specifier)) {
        found.push({ specifier: specifier.text, file: resolve(specifier.text, path), computed: false });
      } else {
        found.push({ specifier: specifier === undefined ? "(none)" : specifier.getText(), file: undefined, computed: true });
      }
    };
    const visit = (node: ts.Node): void => {
      if (ts.isImportDeclaration(node) || (ts.isExportDeclaration(node) && node.moduleSpecifier !== undefined)) add(node.moduleSpecifier);
      else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) add(node.moduleReference.expression);
      else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) add(node.argument.literal as ts.Expression);
      else if (ts.isCallExpression(node) && (node.expression.kind === ts.SyntaxKind.ImportKeyword || (ts.isIdentifier(node.expression) && node.expression.text === "require"))) {
        add(node.arguments[0]);
      }
      ts.forEachChild(node, visit);
    };
    visit(graph.sourceFile(path));
    references.set(path, found);
    return found;
  };
  const graph: SourceGraph = {
    program,
    checker,
    sourceFile(path) {
      const file = program.getSourceFile(path);
      if (file === undefined) throw new Error(`${path} is not in the program`);
      return file;
    },
    references: referencesOf,
    name: (path) => relative(SRC, path).split("\\").join("/"),
  };
  built = graph;
  return graph;
}

/** Every node of `file`'s tree, depth first. */
export function* nodesOf(file: ts.SourceFile): Generator<ts.Node> {
  const stack: ts.Node[] = [file];
  while (stack.length > 0) {
    const node = stack.pop() as ts.Node;
    yield node;
    const children: ts.Node[] = [];
    ts.forEachChild(node, (child) => {
      children.push(child);
    });
    for (let i = children.length - 1; i >= 0; i--) stack.push(children[i] as ts.Node);
  }
}

/** The symbol `node` names, aliases (imports, re-exports) followed to what they stand for. */
export function symbolAt(checker: ts.TypeChecker, node: ts.Node): ts.Symbol | undefined {
  const symbol = checker.getSymbolAtLocation(node);
  if (symbol === undefined) return undefined;
  return symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;
}

/** Whether `symbol` is declared only in declaration files (the runtime's globals: lib.*.d.ts, @types/bun). */
export function isAmbient(symbol: ts.Symbol): boolean {
  const declarations = symbol.declarations ?? [];
  return declarations.length > 0 && declarations.every((declaration) => declaration.getSourceFile().isDeclarationFile);
}

/** Whether `symbol` is a member named `member` of the class `className` declared in `file`. */
export function isMemberOf(symbol: ts.Symbol, file: string, className: string, member: string): boolean {
  if (symbol.name !== member) return false;
  return (symbol.declarations ?? []).some((declaration) => {
    const owner = declaration.parent;
    return owner !== undefined && ts.isClassDeclaration(owner) && owner.name?.text === className && declaration.getSourceFile().fileName === file;
  });
}

/** Whether `symbol` is the class `className` declared in `file`. */
export function isClass(symbol: ts.Symbol, file: string, className: string): boolean {
  return (symbol.declarations ?? []).some(
    (declaration) => ts.isClassDeclaration(declaration) && declaration.name?.text === className && declaration.getSourceFile().fileName === file,
  );
}
