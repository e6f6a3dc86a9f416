"""Validates custom resources against the openAPIV3Schema of their CustomResourceDefinition.

usage: validate_crd_instances.py MANIFESTS INSTANCE...

MANIFESTS is a multi-document YAML file holding the CRD (e.g. `kubectl kustomize` output);
each INSTANCE file holds one or more resources of its kind. Like `kubectl apply` (whose field
validation is strict by default), a field the schema does not declare is an error unless the
schema preserves unknown fields. `x-kubernetes-validations` (CEL) rules are not evaluated.
Prints one line per error, `FILE: NAME: PATH: message`, and exits 1 on any.
"""

import sys

import jsonschema
import yaml


def strict(schema):
    """Copy of `schema` in which objects with declared properties reject undeclared ones."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    with open(argv[1], encoding="utf-8") as f:
        crds = [
            d for d in yaml.safe_load_all(f) if d and d.get("kind") == "CustomResourceDefinition"
        ]
    schemas = {}
    for crd in crds:
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            schema = strict(version["schema"]["openAPIV3Schema"])
            # metadata is the API server's to check; declare it open.
            schema["properties"]["metadata"] = {"type": "object"}
            jsonschema.Draft7Validator.check_schema(schema)
            schemas[key] = jsonschema.Draft7Validator(schema)
    errors = 0
    checked = 0
    for path in argv[2:]:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if not docs:
            print(f"{path}: no resources")
            errors += 1
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            name = (doc.get("metadata") or {}).get("name", "?")
            validator = schemas.get(key)
            if validator is None:
                print(f"{path}: {name}: no CustomResourceDefinition for {key[0]} {key[1]}")
                errors += 1
                continue
            checked += 1
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                where = ".".join(str(p) for p in err.path) or "(root)"
                print(f"{path}: {name}: {where}: {err.message}")
                errors += 1
    print(f"checked {checked} resources, {errors} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
