#!/usr/bin/env bash
# The library builds with its declared minimum Rust (`rust-version` in Cargo.toml), both with
# default and with all features. Dependents resolve their own lock files, so the check resolves
# one as Cargo does for a toolchain that old (dependencies' newest versions that support it),
# in a copy of the tree: the repository's Cargo.lock is left as it is.
#
#   bash scripts/msrv.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MSRV=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[[ -n $MSRV ]] || { echo "msrv: no rust-version in Cargo.toml" >&2; exit 1; }
rustup toolchain install "$MSRV" --profile minimal >/dev/null

COPY=$(mktemp -d)
trap 'rm -rf "$COPY"' EXIT
git ls-files -z | xargs -0 cp --parents -t "$COPY"
cd "$COPY"
CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback cargo update -q
export CARGO_TARGET_DIR=${MSRV_TARGET_DIR:-$OLDPWD/target/msrv}
cargo "+$MSRV" check -q -p syncws
cargo "+$MSRV" check -q -p syncws --all-features
echo "msrv: the library builds with Rust $MSRV (default and all features)"
