#!/usr/bin/env bash
# Short fuzz runs, for CI: runs every fuzz target for N seconds (first argument, default 30),
# seeded with fuzz/corpus/<target>/. New inputs go to fuzz/target/work-corpus/<target>/ (the
# committed seeds are only read); a crash fails the script, with the input saved under
# fuzz/artifacts/<target>/. Where cargo-fuzz or a toolchain able to build its targets is
# missing, it says so and exits 0: `cargo test` runs the seed corpora in any case.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-30}"
targets=(env_protocol supervisor control_request)

skip() {
  echo "fuzz: skipping: $*"
  exit 0
}

command -v cargo >/dev/null 2>&1 || skip "cargo not found"
cargo fuzz --version >/dev/null 2>&1 ||
  skip "cargo-fuzz is not installed (cargo install cargo-fuzz)"

# cargo-fuzz builds with nightly-only flags (-Zsanitizer=...). Prefer a nightly toolchain;
# else let the default toolchain accept them with RUSTC_BOOTSTRAP=1.
if command -v rustup >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
  rustc=(rustc +nightly)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
  rustc=(rustc)
fi

# Probe the toolchain: a failure here is a missing capability, not a bug in the targets.
probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
echo 'fn main() {}' >"$probe/probe.rs"
if ! "${rustc[@]}" -Zsanitizer=address --out-dir "$probe" \
  "$probe/probe.rs" >"$probe/log" 2>&1; then
  sed 's/^/fuzz:   /' "$probe/log" | head -5
  skip "this toolchain cannot build sanitized fuzz targets"
fi

echo "fuzz: using: ${fuzz[*]} ($("${rustc[@]}" --version))"
"${fuzz[@]}" build --debug-assertions

for target in "${targets[@]}"; do
  work="fuzz/target/work-corpus/$target"
  mkdir -p "$work"
  echo "fuzz: $target for ${secs}s"
  "${fuzz[@]}" run --debug-assertions "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -max_len=4096 -timeout=10 -print_final_stats=1
done
echo "fuzz: no crash"
