#!/usr/bin/env python3
"""Converts gitleaks' default rule set (gitleaks.toml, vendored as is) into rules.json, which
src/sink/secrets.rs embeds: the project has a JSON parser and no TOML one.

    python3 src/sink/secrets/convert.py   # from the repository's root; Python 3.11+ (tomllib)

Nothing is dropped or rewritten: every rule and allowlist is copied field by field, and a field this
script does not know (a newer gitleaks feature, say `[[rules.required]]`) is an error, never skipped, so
the detector cannot silently ignore part of a rule. The input's sha256 is recorded in `_source`.
"""

import hashlib
import json
import pathlib
import sys
import tomllib

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "gitleaks.toml"
TARGET = HERE / "rules.json"

TOP = {"title", "minVersion", "allowlist", "rules"}
RULE = {"id", "description", "regex", "secretGroup", "entropy", "keywords", "path", "allowlists"}
ALLOWLIST = {"description", "condition", "regexTarget", "regexes", "stopwords", "paths", "commits"}


def check(keys, known, where):
    unknown = set(keys) - known
    if unknown:
        sys.exit(f"{where}: unknown field(s) {sorted(unknown)}: teach convert.py and secrets.rs first")


def allowlist(a, where):
    check(a, ALLOWLIST, where)
    out = {
        "condition": a.get("condition", "OR"),
        "regexTarget": a.get("regexTarget", "secret"),
        "regexes": a.get("regexes", []),
        "stopwords": a.get("stopwords", []),
        "paths": a.get("paths", []),
        "commits": a.get("commits", []),
    }
    if out["condition"] not in ("OR", "AND"):
        sys.exit(f"{where}: condition {out['condition']!r}")
    if out["regexTarget"] not in ("secret", "match", "line"):
        sys.exit(f"{where}: regexTarget {out['regexTarget']!r}")
    return out


def main():
    raw = SOURCE.read_bytes()
    config = tomllib.loads(raw.decode("utf-8"))
    check(config, TOP, "gitleaks.toml")
    rules = []
    for rule in config["rules"]:
        where = f"rule {rule.get('id')}"
        check(rule, RULE, where)
        rules.append(
            {
                "id": rule["id"],
                "description": rule["description"],
                "regex": rule.get("regex"),
                "secretGroup": rule.get("secretGroup", 0),
                "entropy": rule.get("entropy", 0.0),
                "keywords": rule.get("keywords", []),
                "path": rule.get("path"),
                "allowlists": [
                    allowlist(a, f"{where} allowlist {i}")
                    for i, a in enumerate(rule.get("allowlists", []))
                ],
            }
        )
    out = {
        "_source": {
            "repository": "https://github.com/gitleaks/gitleaks",
            "tag": "v8.30.1",
            "commit": "83d9cd684c87d95d656c1458ef04895a7f1cbd8e",
            "file": "config/gitleaks.toml",
            "sha256": hashlib.sha256(raw).hexdigest(),
            "minVersion": config.get("minVersion"),
        },
        "allowlist": allowlist(config.get("allowlist", {}), "global allowlist"),
        "rules": rules,
    }
    TARGET.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(rules)} rules, sha256 {out['_source']['sha256']} -> {TARGET.name}")


if __name__ == "__main__":
    main()
