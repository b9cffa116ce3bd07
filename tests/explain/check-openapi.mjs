#!/usr/bin/env node
// Usage: node check-openapi.mjs FILE [FILE ...]
//
// Checks that each file (YAML or JSON) is a valid OpenAPI 3.1 document:
// `openapi` must be a 3.1.x version string, the document must validate
// against the official OpenAPI 3.1 JSON Schema (@seriousme/openapi-schema-
// validator, which ships the OAI schema and runs it with Ajv's draft 2020-12
// validator), every local $ref must resolve, and the spec's MUSTs that a
// JSON Schema cannot express must hold (see `semanticErrors`). Prints
// "FILE: valid OpenAPI 3.1" per valid file; prints each error and exits 1
// otherwise (2 when a file cannot be read or parsed as YAML/JSON).
//
// Needs `npm ci --prefix tests/explain`.

import { readFile } from "node:fs/promises";

let Validator;
let parseYaml;
try {
  ({ Validator } = await import("@seriousme/openapi-schema-validator"));
  ({ parse: parseYaml } = await import("yaml"));
} catch (e) {
  console.error(
    `cannot load the validator (${e.message}): run npm ci --prefix tests/explain`,
  );
  process.exit(2);
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node check-openapi.mjs FILE [FILE ...]");
  process.exit(2);
}

// The 3.1 schema says only `^3\.1\.\d+(-.+)?$`, but the validator picks a
// schema by prefix ("3.1" also matches "3.10"): check the version first so
// a 3.0 or 3.2 document never passes as 3.1.
const OPENAPI_31 = /^3\.1\.\d+(-.+)?$/;

/** One line per Ajv error: where, what, and the offending detail. */
function describe(error) {
  if (typeof error === "string") {
    return error;
  }
  const where = error.instancePath === "" ? "/" : error.instancePath;
  const params = error.params ?? {};
  let detail = "";
  if (params.allowedValues) {
    detail = ` (allowed: ${params.allowedValues.join(", ")})`;
  } else if (params.additionalProperty) {
    detail = ` (${params.additionalProperty})`;
  } else if (params.unevaluatedProperty) {
    detail = ` (${params.unevaluatedProperty})`;
  }
  return `${where}: ${error.message}${detail}`;
}

const METHODS = [
  "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/** Follows a local `#/...` $ref (the schema check has made sure it resolves). */
function deref(spec, value) {
  for (let hops = 0; hops < 32; hops += 1) {
    if (typeof value?.$ref !== "string" || !value.$ref.startsWith("#/")) {
      break;
    }
    value = value.$ref
      .slice(2)
      .split("/")
      .map((p) => p.replaceAll("~1", "/").replaceAll("~0", "~"))
      .reduce((node, key) => node?.[key], spec);
  }
  return value;
}

/**
 * OpenAPI 3.1 rules that the official JSON Schema cannot check, and that a
 * generator of the document can get wrong (neither this validator nor
 * swagger-parser checks them for 3.1):
 * - a Security Requirement's names MUST be declared in
 *   components.securitySchemes (3.1.0 §4.8.30);
 * - an operationId MUST be unique among all operations (§4.8.10);
 * - each `{name}` in a path MUST have an `in: path` parameter (§4.8.8), and
 *   each `in: path` parameter must appear in the path.
 */
function semanticErrors(spec) {
  const errors = [];
  const schemes = new Set(Object.keys(spec.components?.securitySchemes ?? {}));
  const checkSecurity = (security, where) => {
    (security ?? []).forEach((requirement, i) => {
      for (const name of Object.keys(requirement ?? {})) {
        if (!schemes.has(name)) {
          errors.push(
            `${where}/${i}: security scheme "${name}" is not declared in components.securitySchemes`,
          );
        }
      }
    });
  };
  checkSecurity(spec.security, "/security");

  const operationIds = new Map();
  // §4.8.8: templated paths that differ only in their parameter names are
  // the same path and MUST NOT both exist.
  const shapes = new Map();
  for (const path of Object.keys(spec.paths ?? {})) {
    const shape = path.replace(/\{[^{}]+\}/g, "{}");
    const first = shapes.get(shape);
    if (first) {
      errors.push(`/paths: "${path}" and "${first}" are the same templated path`);
    } else {
      shapes.set(shape, path);
    }
  }
  for (const [path, rawItem] of Object.entries(spec.paths ?? {})) {
    const item = deref(spec, rawItem) ?? {};
    const pointer = `/paths/${path.replaceAll("~", "~0").replaceAll("/", "~1")}`;
    const templated = new Set(
      [...path.matchAll(/\{([^{}]+)\}/g)].map((m) => m[1]),
    );
    const pathParams = (params) =>
      (params ?? [])
        .map((p) => deref(spec, p))
        .filter((p) => p?.in === "path")
        .map((p) => p.name);
    const names = [...path.matchAll(/\{([^{}]+)\}/g)].map((m) => m[1]);
    if (new Set(names).size !== names.length) {
      errors.push(`${pointer}: a path parameter name is repeated in the path`);
    }
    const common = pathParams(item.parameters);
    if (new Set(common).size !== common.length) {
      errors.push(`${pointer}/parameters: a parameter is listed twice (same name and location)`);
    }
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const where = `${pointer}/${method}`;
      checkSecurity(op.security, `${where}/security`);
      if (typeof op.operationId === "string") {
        const first = operationIds.get(op.operationId);
        if (first) {
          errors.push(`${where}: operationId "${op.operationId}" is already used by ${first}`);
        } else {
          operationIds.set(op.operationId, where);
        }
      }
      const declared = new Set([...common, ...pathParams(op.parameters)]);
      for (const name of templated) {
        if (!declared.has(name)) {
          errors.push(`${where}: path parameter "${name}" has no "in: path" parameter`);
        }
      }
      for (const name of declared) {
        if (!templated.has(name)) {
          errors.push(`${where}: "in: path" parameter "${name}" is not in the path`);
        }
      }
    }
  }
  return errors;
}

let failed = 0;
for (const file of files) {
  let spec;
  try {
    spec = parseYaml(await readFile(file, "utf-8"));
  } catch (e) {
    console.error(`${file}: cannot read as YAML/JSON: ${e.message}`);
    process.exit(2);
  }
  if (spec === null || typeof spec !== "object" || Array.isArray(spec)) {
    console.error(`${file}: not an OpenAPI document (top level is not a mapping)`);
    failed += 1;
    continue;
  }
  if (typeof spec.openapi !== "string" || !OPENAPI_31.test(spec.openapi)) {
    console.error(
      `${file}: openapi is ${JSON.stringify(spec.openapi)}, expected a 3.1.x version string`,
    );
    failed += 1;
    continue;
  }
  // allErrors: report every problem at once, not just the first.
  const result = await new Validator({ allErrors: true }).validate(spec);
  const errors = result.valid
    ? semanticErrors(spec)
    : [...new Set([result.errors].flat().map(describe))];
  if (errors.length === 0) {
    console.log(`${file}: valid OpenAPI 3.1`);
    continue;
  }
  failed += 1;
  console.error(`${file}: invalid OpenAPI 3.1:`);
  for (const line of errors) {
    console.error(`  ${line}`);
  }
}
process.exit(failed === 0 ? 0 : 1);
