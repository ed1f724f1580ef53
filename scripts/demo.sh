#!/usr/bin/env bash
# Set everything up, then run the main job: `aigi detect` with the shipped default model over sample images
# that are available offline (real photos that ship with scikit-image, plus a few generated images from
# ../shared/data/aigi-mini when that folder is present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
samples=.aigi-samples
rm -rf "$samples" && mkdir -p "$samples/photos" "$samples/generated"
aigi samples "$samples/photos" >/dev/null
mini=../shared/data/aigi-mini/test/1_fake
if [ -d "$mini" ]; then
  for g in dalle2 pixray_vqgan_clip modern_misc; do
    mapfile -t files < <(find "$mini/$g" -type f | sort)  # not `| head`: under pipefail, sort's SIGPIPE would stop the demo
    for f in "${files[@]:0:2}"; do cp "$f" "$samples/generated/${g}_$(basename "$f")"; done
  done
fi
aigi detect "$samples"
