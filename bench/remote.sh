#!/usr/bin/env bash
# Remote cache: pulling against recomputing, transfer throughput against
# curl on the same server, and what a reachable remote adds to a no-op run.
# All through a local nginx with WebDAV (the HTTP remote, Bazel's layout),
# started on 127.0.0.1 by this script.
#
#   bash bench/remote.sh              # 1 GiB transfer blob
#   GIB=0.25 bash bench/remote.sh     # a quick look
#
# Each figure is the best of REPS (default 3) runs; ratios are of the two
# programs in the same run on the same machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
REPS="${REPS:-3}"
GIB="${GIB:-1}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$NGINX" ] || { echo "nginx not found: scripts/setup.sh installs it" >&2; exit 1; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/nginx/data"
cat > "$WORK/nginx/nginx.conf" <<CONF
user root;
worker_processes 2;
error_log $WORK/nginx/error.log;
pid $WORK/nginx/nginx.pid;
events {}
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy; fastcgi_temp_path $WORK/nginx/fcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi; scgi_temp_path $WORK/nginx/scgi;
  client_max_body_size 0;
  server {
    listen 127.0.0.1:$PORT;
    root $WORK/nginx/data;
    location / { dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw group:r all:r; }
  }
}
CONF
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
trap '"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -s stop 2>/dev/null; rm -rf "$WORK"' EXIT
URL="http://127.0.0.1:$PORT/cache"
sleep 0.3

# best CMD...: the best wall time of REPS runs, in seconds.
best() {
  local b=""
  for _ in $(seq "$REPS"); do
    local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
    b=$(python3 -c "t=$e-$s; b='$b'; print(t if not b or t<float(b) else b)")
  done
  echo "$b"
}
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

# 1. Pulling the quickstart against recomputing it.
Q="$PWD/configs/quickstart.yaml"
fresh() { rm -rf "$WORK/q-$1"; mkdir -p "$WORK/q-$1"; cp "$Q" "$WORK/q-$1/c.yaml"; }
fresh push; (cd "$WORK/q-push" && "$BIN" run c.yaml --remote "$URL" >/dev/null 2>&1)
compute() { fresh c; (cd "$WORK/q-c" && "$BIN" run c.yaml); }
pull() { fresh p; (cd "$WORK/q-p" && "$BIN" run c.yaml --remote "$URL" --remote-read-only); }
t_compute=$(best compute); t_pull=$(best pull)

# 2. A no-op run of the quickstart, with and without a reachable remote.
noop_local() { (cd "$WORK/q-push" && "$BIN" run c.yaml); }
noop_remote() { (cd "$WORK/q-push" && "$BIN" run c.yaml --remote "$URL"); }
t_noop=$(best noop_local); t_noop_r=$(best noop_remote)

# 3. Throughput on one blob of GIB GiB: a synthetic prepared dataset of that
# size, pushed by `cache push` and pulled by `cache pull`, against curl's
# PUT and GET of the same bytes on the same server.
classes=100
per=$(python3 -c "print(int($GIB * (1<<30) / ($classes * 32*32*3)))")
mkdir -p "$WORK/big-a"
cat > "$WORK/big-a/c.yaml" <<YAML
datasets:
  big: {synthetic: {classes: $classes, train_per_class: $per, test_per_class: 1, image_size: 32, seed: 1}}
orders: {a: {numpy_seed: 1}}
settings: {s: {base: 50, increment: 50}}
experiments: {e: {dataset: big, orders: [a], settings: [s]}}
YAML
(cd "$WORK/big-a" && "$BIN" run c.yaml >/dev/null 2>&1)
digest=$(python3 - "$WORK/big-a/.bsce" <<'PY'
import json, pathlib, sys
for p in pathlib.Path(sys.argv[1], "ac").rglob("*.json"):
    r = json.loads(p.read_text())
    if r["label"] == "prepare/big":
        print(r["outputs"]["train.images"]["digest"])
PY
)
blob="$WORK/big-a/.bsce/cas/${digest:0:2}/${digest:2}"
bytes=$(stat -c %s "$blob")
push() { rm -rf "$WORK/nginx/data/cache"; (cd "$WORK/big-a" && "$BIN" cache push c.yaml --remote "$URL"); }
curl_put() { rm -rf "$WORK/nginx/data/cache"; curl -sf -T "$blob" "$URL/cas/$digest"; }
t_push=$(best push); t_curl_put=$(best curl_put)
push >/dev/null 2>&1
pullbig() { rm -rf "$WORK/big-b"; mkdir -p "$WORK/big-b"; cp "$WORK/big-a/c.yaml" "$WORK/big-b/"; (cd "$WORK/big-b" && "$BIN" cache pull c.yaml --remote "$URL"); }
curl_get() { curl -sf -o "$WORK/curl.out" "$URL/cas/$digest" && sha256sum "$WORK/curl.out" >/dev/null; }
curl_get_only() { curl -sf -o "$WORK/curl.out" "$URL/cas/$digest"; }
t_pullbig=$(best pullbig); t_curl_get=$(best curl_get); t_curl_only=$(best curl_get_only)
mibs() { python3 -c "print(f'{$bytes/(1<<20)/$1:.0f}')"; }

echo
echo "remote cache bench: nginx WebDAV on 127.0.0.1, best of $REPS, $(nproc) cores"
echo
echo "| measure | bsce-pipe | peer | ratio |"
echo "|---|---|---|---|"
echo "| quickstart from the remote vs computed | $(printf %.2f "$t_pull") s pulled | $(printf %.2f "$t_compute") s computed | $(ratio "$t_compute" "$t_pull")x faster |"
echo "| no-op run, remote reachable vs none | $(printf %.3f "$t_noop_r") s | $(printf %.3f "$t_noop") s | +$(python3 -c "print(f'{$t_noop_r-$t_noop:.3f}')") s |"
echo "| push $(python3 -c "print(f'{$bytes/(1<<30):.2f}')") GiB blob (cache push) vs curl -T | $(mibs "$t_push") MiB/s | $(mibs "$t_curl_put") MiB/s | $(ratio "$t_curl_put" "$t_push")x curl |"
echo "| pull it (cache pull, hashed) vs curl -o + sha256sum | $(mibs "$t_pullbig") MiB/s | $(mibs "$t_curl_get") MiB/s | $(ratio "$t_curl_get" "$t_pullbig")x curl |"
echo "| pull it vs curl -o alone (no hash) | $(mibs "$t_pullbig") MiB/s | $(mibs "$t_curl_only") MiB/s | $(ratio "$t_curl_only" "$t_pullbig")x curl |"
