// Throwaway certificates for the TLS tests, made with the openssl command line in a temp dir:
// a CA, a node certificate it signed (for 127.0.0.1, usable as server and client), and a rogue
// certificate for 127.0.0.1 signed by another CA.
import { writeFileSync } from "node:fs";
import { join } from "node:path";

/** Paths of the PEM files written. */
export interface TestCertificates {
  readonly caCert: string;
  readonly nodeCert: string;
  readonly nodeKey: string;
  readonly rogueCaCert: string;
  readonly rogueCert: string;
  readonly rogueKey: string;
}

function openssl(dir: string, args: string[]): void {
  const result = Bun.spawnSync(["openssl", ...args], { cwd: dir, stdout: "pipe", stderr: "pipe" });
  if (result.exitCode !== 0) throw new Error(`openssl ${args.join(" ")} failed: ${result.stderr.toString()}`);
}

/** A CA and a certificate it signed, for `name`. */
function issue(dir: string, ca: string, name: string): void {
  openssl(dir, ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", `${ca}.key`, "-out", `${ca}.crt`, "-days", "2", "-subj", `/CN=${ca}`]);
  openssl(dir, ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`]);
  writeFileSync(join(dir, `${name}.ext`), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n");
  openssl(dir, ["x509", "-req", "-in", `${name}.csr`, "-CA", `${ca}.crt`, "-CAkey", `${ca}.key`, "-CAcreateserial", "-out", `${name}.crt`, "-days", "2", "-extfile", `${name}.ext`]);
}

/** Writes the certificates into `dir` (which must exist) and returns their paths. */
export function makeTestCertificates(dir: string): TestCertificates {
  issue(dir, "test-ca", "node");
  issue(dir, "rogue-ca", "rogue");
  return {
    caCert: join(dir, "test-ca.crt"),
    nodeCert: join(dir, "node.crt"),
    nodeKey: join(dir, "node.key"),
    rogueCaCert: join(dir, "rogue-ca.crt"),
    rogueCert: join(dir, "rogue.crt"),
    rogueKey: join(dir, "rogue.key"),
  };
}
