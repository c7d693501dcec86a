// Reading an artifact's manifest.json and validating it against the artifact's JSON
// Schema (tgc/artifact.schema.json, copied beside this file by `tgc bundle`) -- the same
// schema the Python runtimes validate against. The browser never re-derives what the
// compiler decided: everything the executors do comes from this file.

import { Validator } from "./vendor/json-schema/index.js";

export const FORMAT = "tgc-artifact";
export const VERSIONS = [2];
export const SCHEMA_URL = new URL("./artifact.schema.json", import.meta.url);

let schemaPromise = null;

async function schemaValidator(url = SCHEMA_URL) {
  if (!schemaPromise) {
    schemaPromise = (async () => {
      const r = await fetch(url);
      if (!r.ok) throw new Error(`the artifact JSON Schema ${url} is missing (HTTP ${r.status}); tgc bundle copies it beside the runtime`);
      const schema = await r.json();
      const draft = /2020-12/.test(schema.$schema || "") ? "2020-12" : /2019-09/.test(schema.$schema || "") ? "2019-09" : /draft-07/.test(schema.$schema || "") ? "7" : /draft-04/.test(schema.$schema || "") ? "4" : "2020-12";
      return new Validator(schema, draft, false);
    })();
    schemaPromise.catch(() => { schemaPromise = null; });
  }
  return schemaPromise;
}

/** Errors of `manifest` against the schema, as "location: message" strings (empty when valid). */
export async function validateManifest(manifest, schemaUrl) {
  const v = await schemaValidator(schemaUrl);
  const r = v.validate(manifest);
  if (r.valid) return [];
  // the deepest errors say the most; cfworker lists the chain from the root
  const errs = r.errors.filter((e) => e.keyword !== "properties" && e.keyword !== "items" && e.keyword !== "$ref" && e.keyword !== "allOf");
  return (errs.length ? errs : r.errors).map((e) => `${e.instanceLocation}: ${e.error}`);
}

/** The manifest at `${artifactUrl}manifest.json`, checked (format, version, schema). */
export async function loadManifest(artifactUrl, { validate = true, schemaUrl } = {}) {
  const url = new URL("manifest.json", artifactUrl);
  let r;
  try { r = await fetch(url); } catch (e) { throw new Error(`cannot fetch ${url}: ${e.message}`); }
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status} (not a tgc artifact directory?)`);
  let m;
  try { m = await r.json(); } catch (e) { throw new Error(`${url}: corrupt manifest (${e.message})`); }
  if (!m || m.format !== FORMAT) throw new Error(`${url}: not a tgc artifact manifest`);
  if (!VERSIONS.includes(m.version)) throw new Error(`${url}: artifact format version ${m.version}; this runtime reads version ${VERSIONS.join(", ")} (recompile with this tgc, or bundle again)`);
  if (validate) {
    const errs = await validateManifest(m, schemaUrl);
    if (errs.length) throw new Error(`${url}: does not match the artifact schema: ${errs.slice(0, 3).join("; ")}${errs.length > 3 ? ` (and ${errs.length - 3} more)` : ""}`);
  }
  return m;
}
