#!/usr/bin/env bash
# The demo deploy: on this machine, install what is missing, bring up dockerd, start an nginx of
# its own built from nginx/conf.d, and deploy the demo service twice (blue, then green), showing
# nginx switch between them. Re-running it deploys again, to the other color.
#
#   bash scripts/demo.sh            # DEMO_PORT=8088 DEMO_DIR=/tmp/pipeline-demo by default
#   bash scripts/demo.sh clean      # stop the demo nginx, remove the demo containers and network
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO_DIR="${DEMO_DIR:-/tmp/pipeline-demo}"
DEMO_PORT="${DEMO_PORT:-8088}"
PREVIEW_PORT="${PREVIEW_PORT:-8089}"

say() { printf '\n\033[1m### %s\033[0m\n' "$*"; }
nginx_argv=(nginx -p "$DEMO_DIR" -c "$DEMO_DIR/nginx.conf")

if [[ "${1:-}" == clean ]]; then
    "${nginx_argv[@]}" -s quit 2>/dev/null || true
    docker rm -f demo-blue demo-green 2>/dev/null || true
    docker network rm deploy 2>/dev/null || true
    rm -rf "$DEMO_DIR"
    exit 0
fi

say "installing what is missing and starting dockerd (scripts/stack.sh start)"
bash "$repo/scripts/stack.sh" start
python3 -m pip install --quiet --disable-pip-version-check -e "$repo"

say "starting a demo nginx on 127.0.0.1:$DEMO_PORT from the shipped nginx/conf.d"
mkdir -p "$DEMO_DIR"
for f in 00-log-format.conf app.conf app-preview.conf; do
    sed -e "s#/etc/nginx/conf.d/#$DEMO_DIR/#g" -e "s#/var/log/nginx/#$DEMO_DIR/#g" \
        -e "s#listen 80 default_server;#listen 127.0.0.1:$DEMO_PORT;#" \
        -e "s#listen 8081;#listen 127.0.0.1:$PREVIEW_PORT;#" \
        "$repo/nginx/conf.d/$f" >"$DEMO_DIR/$f"
done
cat >"$DEMO_DIR/nginx.conf" <<CONF
worker_processes 1;
pid $DEMO_DIR/nginx.pid;
error_log $DEMO_DIR/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    include $DEMO_DIR/00-log-format.conf;
    include $DEMO_DIR/app.conf;
    include $DEMO_DIR/app-preview.conf;
}
CONF
# Until the first deploy the include points at the discard port: nginx answers 502.
[[ -f "$DEMO_DIR/service-url.inc" ]] || echo 'set $service_url http://127.0.0.1:9;' >"$DEMO_DIR/service-url.inc"
[[ -f "$DEMO_DIR/service-url-preview.inc" ]] || echo 'set $preview_url http://127.0.0.1:9;' >"$DEMO_DIR/service-url-preview.inc"
if [[ -s "$DEMO_DIR/nginx.pid" ]] && kill -0 "$(<"$DEMO_DIR/nginx.pid")" 2>/dev/null; then
    "${nginx_argv[@]}" -s reload
else
    "${nginx_argv[@]}"
fi

# The settings, as a team would keep them in .env next to the code (the environment wins).
cat >"$DEMO_DIR/demo.env" <<ENV
APP_NAME=demo
BUILD_COMMAND=./build.sh
DOCKERFILE=../docker/Dockerfile
BUILD_CONTEXT=.
BUILD_ARGS=BASE_IMAGE=pipeline/jre:17 JAR=build/libs/app.jar
HEALTH_INTERVAL=1
HEALTH_TIMEOUT=60
DRAIN_SECONDS=2
STOP_TIMEOUT=10
VERIFY_SECONDS=5
NGINX_ACCESS_LOG=$DEMO_DIR/app.access.log
NGINX_INCLUDE=$DEMO_DIR/service-url.inc
NGINX_PREVIEW_INCLUDE=$DEMO_DIR/service-url-preview.inc
NGINX_TEST_COMMAND=${nginx_argv[*]} -t -q
NGINX_RELOAD_COMMAND=${nginx_argv[*]} -s reload
NGINX_PID_FILE=$DEMO_DIR/nginx.pid
ENV
echo "settings: $DEMO_DIR/demo.env"

cd "$repo/demo"
for round in 1 2; do
    version="demo-$(date -u +%H%M%S)-$round"
    say "deploy $round: python -m pipeline deploy  (APP_VERSION=$version)"
    APP_VERSION="$version" python3 -m pipeline --env-file "$DEMO_DIR/demo.env" deploy
    say "nginx on 127.0.0.1:$DEMO_PORT now answers:"
    curl -fsS "http://127.0.0.1:$DEMO_PORT/"
    sleep 1
done

say "python -m pipeline status"
python3 -m pipeline --env-file "$DEMO_DIR/demo.env" status
say "python -m pipeline history"
python3 -m pipeline --env-file "$DEMO_DIR/demo.env" history
say "last requests in nginx's access log (upstream= shows the color's fixed IP)"
tail -n 3 "$DEMO_DIR/app.access.log"
echo
echo "Try: (cd demo && python3 -m pipeline --env-file $DEMO_DIR/demo.env rollback)"
echo "Clean up: bash scripts/demo.sh clean"
