#!/usr/bin/env bash
# Installs what `multihead bench`'s ONNX Runtime peer needs (bench/ort_peer.cpp): the
# onnxruntime-node package (ORT's CPU library, run by node) into
# ${MULTIHEAD_ORT_DIR:-$HOME/.cache/multihead/ort}, and Debian's python3-onnx, which
# writes the peer's model. Idempotent: a second run changes nothing.
set -euo pipefail

ORT_VERSION=1.31.1
dir=${MULTIHEAD_ORT_DIR:-$HOME/.cache/multihead/ort}

if ! /usr/bin/python3 -c 'import onnx' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq python3-onnx >/dev/null ||
      { apt-get update -qq && apt-get install -y -qq python3-onnx >/dev/null; }
  else
    echo "install_ort.sh: /usr/bin/python3 cannot import onnx: install python3-onnx (apt-get install python3-onnx)" >&2
    exit 1
  fi
fi

for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "install_ort.sh: $tool not found (apt-get install nodejs npm)" >&2; exit 1; }
done

package_json="$dir/node_modules/onnxruntime-node/package.json"
installed=$(node -p "try { require('$package_json').version } catch { '' }" 2>/dev/null || true)
if [ "$installed" != "$ORT_VERSION" ]; then
  mkdir -p "$dir"
  # The package's install script downloads optional GPU binaries from outside the npm
  # registry; the CPU library ships inside the package itself, so skip that step.
  ONNXRUNTIME_NODE_INSTALL=skip npm install --prefix "$dir" --no-audit --no-fund "onnxruntime-node@$ORT_VERSION"
fi
node -e "require('$dir/node_modules/onnxruntime-node')"
echo "onnxruntime-node $ORT_VERSION in $dir"
