#!/usr/bin/env bash
# Renders the demo's attention.html in headless Chromium (no network) and checks that the
# page drew one head panel per head and one model-view cell per layer x head, with no
# script errors. Usage: render_test.sh MULTIHEAD_BINARY. Exit 77 (skip) without chromium.
set -euo pipefail

bin=${1:?usage: render_test.sh MULTIHEAD_BINARY}
chromium=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$chromium" ]]; then
  echo "render_test: chromium not installed (scripts/bootstrap.sh installs it); skipping"
  exit 77
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
heads=4 layers=2
"$bin" demo --steps 20 --heads "$heads" --layers "$layers" --out "$work/out" > "$work/demo.txt" 2>&1 ||
  { cat "$work/demo.txt"; exit 1; }

# The page sets #status to "ok: ..." after drawing, or "error: ..." from window.onerror.
timeout 120 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/profile" --enable-logging=stderr --v=0 --virtual-time-budget=5000 \
  --dump-dom "file://$work/out/attention.html" > "$work/dom.html" 2> "$work/chromium.log"

fail=0
status=$(grep -o 'id="status">[^<]*' "$work/dom.html" | sed 's/.*>//' || true)
panels=$(grep -o 'class="head-panel"' "$work/dom.html" | wc -l)
cells=$(grep -o 'class="model-cell"' "$work/dom.html" | wc -l)
echo "status: $status; head panels: $panels; model cells: $cells"
[[ "$status" == ok:* ]] || { echo "FAIL: page status is '$status'"; fail=1; }
((panels == heads)) || { echo "FAIL: expected $heads head panels"; fail=1; }
((cells == heads * layers)) || { echo "FAIL: expected $((heads * layers)) model cells"; fail=1; }
# The page logs nothing when it works: any console line (console.error, "Uncaught ...") fails.
if grep -E 'Uncaught|:CONSOLE[:(]' "$work/chromium.log"; then
  echo "FAIL: console output"
  fail=1
fi
((fail == 0)) && echo PASS
exit "$fail"
