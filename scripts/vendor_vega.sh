#!/usr/bin/env bash
# Rebuild .dvc/plots/page.html, the page `dvc plots show` fills (plots.html_template in .dvc/config), with vega,
# vega-lite and vega-embed inlined from the npm registry's packages: the page then renders without network access
# (DVC's default page loads them from a CDN). Run only to change versions; the page is committed.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSIONS=${VERSIONS:-"vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0"}
OUT=.dvc/plots/page.html
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent $VERSIONS >/dev/null)
for tarball in "$work"/*.tgz; do
  name=$(basename "$tarball" | sed -E 's/-[0-9].*//')
  mkdir -p "$work/$name" && tar xzf "$tarball" -C "$work/$name" --strip-components 1
  if [ -f "$work/$name/LICENSE" ]; then  # vega's own package ships none; its package.json says BSD-3-Clause
    cp "$work/$name/LICENSE" ".dvc/plots/LICENSE-$name"
  fi
done
for name in vega vega-lite vega-embed; do
  # DVC substitutes these placeholders anywhere in the page; a script containing one would be corrupted.
  if grep -q -e '{plot_divs}' -e '{scripts}' -e '{refresh_tag}' -e '</script' "$work/$name/build/$name.min.js"; then
    echo "vendor_vega: $name.min.js contains a DVC placeholder or </script>; cannot inline it" >&2
    exit 1
  fi
done

{
  printf '<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <meta charset="utf-8">\n    <title>DVC Plot</title>\n'
  printf '    <!-- %s, inlined by scripts/vendor_vega.sh (BSD-3-Clause, see .dvc/plots/LICENSE-*) -->\n' "$VERSIONS"
  for name in vega vega-lite vega-embed; do
    printf '    <script>\n'
    cat "$work/$name/build/$name.min.js"
    printf '\n    </script>\n'
  done
  printf '    <style>\n        table { border-spacing: 15px; }\n    </style>\n</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n'
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "vendor_vega: wrote $OUT ($(du -k "$OUT" | cut -f1) KiB)"
