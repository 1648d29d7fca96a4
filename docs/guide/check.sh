#!/usr/bin/env bash
# The user guide's check, for CI: the guide must stay true.
#
# 1. Every chapter listed in src/SUMMARY.md is compiled by the snippet crate (snippets/lib.rs).
# 2. The book builds (`mdbook build docs/guide`; mdbook is installed when missing).
# 3. Every ```rust block compiles, and runs unless marked `no_run`: the chapters are the docs of
#    the `millstream-guide` crate, run as doc tests with every backend feature on.
# 4. Getting started, as a new user meets it: a crate made by `cargo new` beside a checkout, with
#    the chapter's [dependencies] block and src/main.rs exactly as printed (each follows a
#    `<!-- guide-crate:NAME -->` marker), builds without a warning and prints exactly the chapter's output block.
#    The checkout is this one, linked in as `millstream/` beside the crate. Without the
#    `.state(Prices { .. })` line, the program must stop with the chapter's error block.
set -euo pipefail
guide="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$guide/../.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/millstream-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
say() { echo "guide: $*" >&2; }

# --- 1. every chapter is compiled ---------------------------------------------------------------
chapters=$(grep -o '([A-Za-z0-9_-]*\.md)' docs/guide/src/SUMMARY.md | tr -d '()')
[ -n "$chapters" ] || { say "no chapters found in docs/guide/src/SUMMARY.md"; exit 1; }
for chapter in $chapters; do
    grep -qF "include_str!(\"../src/$chapter\")" docs/guide/snippets/lib.rs || {
        say "chapter $chapter is not included in docs/guide/snippets/lib.rs: its snippets would not be compiled"
        exit 1
    }
done

# --- 2. the book --------------------------------------------------------------------------------
command -v mdbook >/dev/null || cargo install --locked mdbook --version '^0.5'
mdbook build docs/guide

# --- 3. the snippets ----------------------------------------------------------------------------
cargo test -p millstream-guide --doc --features full

# --- 4. getting started in a new crate ------------------------------------------------------------
# The fenced block right after the marker line `<!-- guide-crate:$1 -->`, without its fences.
block() {
    awk -v marker="<!-- guide-crate:$1 -->" '
        $0 == marker { found = 1; next }
        found == 1 && /^```/ { found = 2; next }
        found == 1 && NF { exit 2 }
        found == 2 && /^```/ { done = 1; exit }
        found == 2 { print }
        END { if (!done) exit 2 }
    ' docs/guide/src/getting-started.md
}
deps=$(block deps) || { say "getting-started.md: no block after <!-- guide-crate:deps -->"; exit 1; }
main=$(block main) || { say "getting-started.md: no block after <!-- guide-crate:main -->"; exit 1; }
output=$(block output) || { say "getting-started.md: no block after <!-- guide-crate:output -->"; exit 1; }
error=$(block error) || { say "getting-started.md: no block after <!-- guide-crate:error -->"; exit 1; }

# One folder per checkout, kept between runs with its own target dir (the paths stay the same, so
# a second run rebuilds only what changed).
work="${GUIDE_CRATE_DIR:-/tmp/millstream-guide-crate-$(cksum <<<"$root" | cut -d' ' -f1)}"
target="${GUIDE_CRATE_TARGET_DIR:-/tmp/millstream-guide-crate-target}"
rm -rf "$work"
mkdir -p "$work"
ln -s "$root" "$work/millstream"
(cd "$work" && cargo new --quiet --vcs none shop)
# `cargo new` ends its manifest with an empty [dependencies] table: the guide's block replaces it.
sed -i '/^\[dependencies\]$/,$d' "$work/shop/Cargo.toml"
{
    printf '%s\n' "$deps"
    printf '\n# Added by docs/guide/check.sh: a workspace of its own.\n[workspace]\n'
} >>"$work/shop/Cargo.toml"
printf '%s\n' "$main" >"$work/shop/src/main.rs"
# The versions the workspace's tests use, not whatever is newest today.
cp Cargo.lock "$work/shop/Cargo.lock"

say "getting started: cargo run in $work/shop"
if ! printed=$(cd "$work/shop" && CARGO_TARGET_DIR="$target" cargo run --quiet 2>"$work/stderr.log"); then
    cat "$work/stderr.log" >&2
    say "the getting-started program does not build or run with the chapter's [dependencies]"
    exit 1
fi
if grep -q '^warning' "$work/stderr.log"; then
    cat "$work/stderr.log" >&2
    say "the getting-started program builds with warnings"
    exit 1
fi
if [ "$printed" != "$output" ]; then
    say "the getting-started program printed:"
    printf '%s\n' "$printed" >&2
    say "but the chapter says it prints:"
    printf '%s\n' "$output" >&2
    exit 1
fi

# The chapter's mistake: without the `.state(Prices { .. })` line, the program stops with the
# chapter's error (main returns it: Rust prints `Error: ` and its Debug form, then exits 1).
state_line='.state(Prices { cents_per_item: 250 })'
[ "$(grep -cF "$state_line" "$work/shop/src/main.rs")" = 1 ] || {
    say "the getting-started program has no single line with $state_line"
    exit 1
}
grep -vF "$state_line" <<<"$main" >"$work/shop/src/main.rs"
if (cd "$work/shop" && CARGO_TARGET_DIR="$target" cargo run --quiet >/dev/null 2>"$work/stderr.log"); then
    say "without the prices the getting-started program should fail, but it ran"
    exit 1
fi
printed=$(grep '^Error: ' "$work/stderr.log" || true)
if [ "$printed" != "$error" ]; then
    cat "$work/stderr.log" >&2
    say "without the prices the getting-started program printed the error above, but the chapter says:"
    printf '%s\n' "$error" >&2
    exit 1
fi
say "ok: the book builds, every snippet compiles, getting started runs as printed"
