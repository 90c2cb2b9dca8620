#!/usr/bin/env python3
"""Checks the declared MSRV (`rust-version`) on a machine with one toolchain.

No dependency built for this platform may declare a newer `rust-version`
than the workspace's. Clippy's `incompatible_msrv` lint (on in `cargo
clippy`) checks our own use of the standard library against it.
"""
import json
import subprocess
import sys


def version(v):
    """`1.89` and `1.89.0` are the same version."""
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


host = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
target = next(line.split(": ", 1)[1] for line in host.splitlines() if line.startswith("host: "))
meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", target],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
)
members = set(meta["workspace_members"])
ours = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
if len(ours) != 1 or None in ours:
    sys.exit(f"check-msrv: every workspace member must declare one rust-version, found {sorted(map(str, ours))}")
msrv = ours.pop()
used = {node["id"] for node in meta["resolve"]["nodes"]}
newer = sorted(
    "{} {} needs Rust {}".format(p["name"], p["version"], p["rust_version"])
    for p in meta["packages"]
    if p["id"] in used and p["rust_version"] and version(p["rust_version"]) > version(msrv)
)
if newer:
    sys.exit(f"check-msrv: rust-version is {msrv}, but:\n  " + "\n  ".join(newer))
print(f"check-msrv: rust-version {msrv}; no dependency of the {len(used)} built declares a newer one")
