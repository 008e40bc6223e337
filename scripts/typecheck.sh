#!/usr/bin/env bash
# mypy does not follow setuptools' package-dir mapping, so type-check a tree of symlinks laid out
# as the installed package: advdim/{core modules and subpackages, theory -> ../theory, ...}.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
tree="$root/build/typecheck"
rm -rf "$tree" && mkdir -p "$tree/advdim"
for f in "$root"/advdim/*.py; do ln -s "$f" "$tree/advdim/"; done
for sub in "$root"/advdim/*/; do
  case "$(basename "$sub")" in __pycache__) ;; *) ln -s "${sub%/}" "$tree/advdim/";; esac
done
for layer in theory simulate empirical; do ln -s "$root/$layer" "$tree/advdim/$layer"; done
cd "$tree" && "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" -p advdim
