#!/usr/bin/env bash
# ImageNet-style preparation and loading at a size that does not fit a
# small cache. Usage: bash bench/imagenet.sh  (PER_CLASS=1000 by default:
# 4,020 JPEGs of 500x375 -> a 790 MB artefact at 256 px; run as root so the
# page cache can be dropped before each read measurement).
# Prints: preparation images/s on 1 core and on all cores (per core) against
# a plain image::open + resize loop on 1 core over the same files; then the
# loader's random-batch gather from the memory-mapped train.images with a
# cold page cache against `cat` of the same file, cold too.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BENCH_PER_CLASS="${PER_CLASS:-1000}" cargo bench -p bsce-stages --bench jpeg 2>&1 \
  | grep -E '^(image-folder|loader)'
