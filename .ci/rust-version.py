#!/usr/bin/env python3
"""Fails when the workspace's declared rust-version is below a locked dependency's.

Reads `cargo metadata` (the locked graph) on stdin: every package that declares a
rust-version must need no newer compiler than the workspace says it supports.
"""
import json
import sys


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.load(sys.stdin)
ours = set(meta["workspace_members"])
declared = {p["rust_version"] for p in meta["packages"] if p["id"] in ours}
if len(declared) != 1 or None in declared:
    sys.exit(f"every workspace crate must declare one rust-version, found {sorted(map(str, declared))}")
floor = declared.pop()
newer = sorted(
    (version(p["rust_version"]), p["name"], p["version"])
    for p in meta["packages"]
    if p["id"] not in ours and p.get("rust_version") and version(p["rust_version"]) > version(floor)
)
if newer:
    for needs, name, ver in newer:
        print(f"{name} {ver} needs rust {'.'.join(map(str, needs))}")
    sys.exit(f"the workspace declares rust-version {floor}, below what the locked dependencies above need")
print(f"rust-version {floor} covers every locked dependency")
