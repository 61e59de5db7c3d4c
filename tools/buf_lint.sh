#!/usr/bin/env bash
# Runs `buf lint` on proto/ with googleapis' protos taken from the installed
# googleapis-common-protos package (the Buf Schema Registry is not reachable from CI).
# The lint rules are those of proto/buf.yaml.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PY:-$root/.venv/bin/python}"
googleapis="$("$py" -c 'import pathlib, google.api.annotations_pb2 as m; print(pathlib.Path(m.__file__).resolve().parents[2])')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/deps/google" "$work/proto"
cp -r "$googleapis/google/api" "$googleapis/google/rpc" "$work/deps/google/"
cp -r "$root/proto/flowforge" "$work/proto/"
{
  echo "version: v2"
  echo "modules:"
  echo "  - path: proto"
  echo "  - path: deps"
  # the lint and breaking sections of proto/buf.yaml, verbatim
  sed -n '/^lint:/,$p' "$root/proto/buf.yaml"
} > "$work/buf.yaml"
cd "$work"
npx --yes @bufbuild/buf@1.47.2 lint proto 2> >(grep -v '^npm warn' >&2)
