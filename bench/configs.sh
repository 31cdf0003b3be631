# Config writers and helpers shared by the bench scripts (sourced, not run), so
# that every measurement puts nginx and HAProxy in the same configuration and
# counts the same way. Each writer prints a config; DIR is the instance's own
# directory (pid, logs, temp files).

free_port() { # a loopback port free now (for one server at a time; run.sh takes its ports at once)
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

need() { # CMD... : exits with a message unless every one is installed
  local c
  for c in "$@"; do command -v "$c" >/dev/null || { echo "$c is not installed" >&2; exit 1; }; done
}

workdir() { # NAME : W = a fresh /tmp/gatekeeper-NAME.* dir; on exit the processes in
  # UP_PID and PROXY_PID are stopped and W is removed
  W=$(mktemp -d "/tmp/gatekeeper-$1.XXXXXX")
  UP_PID="" PROXY_PID=""
  trap 'for p in $PROXY_PID $UP_PID; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
}

wait_up() { # PORT : until something answers HTTP on 127.0.0.1:PORT (10 s at most; never fails)
  local _
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done
  return 0
}

cpu_ns() { # PID... : on-CPU nanoseconds of every thread of these processes and their
  # children (nginx's workers), each process counted once: schedstat, exact, user and kernel
  local p t ns _ total=0
  for p in $({ for p in "$@"; do echo "$p"; pgrep -P "$p" || true; done; } | sort -u); do
    for t in /proc/"$p"/task/*; do
      read -r ns _ <"$t/schedstat" 2>/dev/null || continue
      total=$((total + ns))
    done
  done
  echo "$total"
}

pin_setup() { # from PIN=1: WORKERS=1, ON_PROXY/ON_LOAD = taskset prefixes (the proxy on
  # PROXY_CPU, default 1; the load on LOAD_CPU, default 0); otherwise WORKERS=2, no prefixes
  WORKERS=2 ON_PROXY=() ON_LOAD=()
  if [ "${PIN:-0}" = 1 ]; then
    command -v taskset >/dev/null || { echo "pinning needs taskset (util-linux)" >&2; exit 1; }
    WORKERS=1 ON_PROXY=(taskset -c "${PROXY_CPU:-1}") ON_LOAD=(taskset -c "${LOAD_CPU:-0}")
  fi
  export WORKERS
}

start_upstream() { # DIR [PREFIX...] : the app (upstream_conf) in the background, run under
  # PREFIX (taskset ...) if given; sets UP (its port) and UP_PID, returns once it answers
  local d=$1
  shift
  UP=$(free_port)
  mkdir -p "$d"
  upstream_conf "$d" "$UP" >"$d/nginx.conf"
  "$@" nginx -e "$d/error.log" -p "$d" -c "$d/nginx.conf" -g "daemon off;" &
  UP_PID=$!
  wait_up "$UP"
}

gk_plain_conf() { # PORT UPSTREAM_PORT DIR [WORKERS] [PAGE_DIR] : gatekeeper as the focused
  # scripts run it (toggle under DIR/toggle, no access log; the page from PAGE_DIR if given)
  mkdir -p "$3/toggle"
  printf 'listen = ["127.0.0.1:%s"]\n' "$1"
  if [ -n "${4:-}" ]; then printf '[server]\nworkers = %s\n' "$4"; fi
  printf '[upstream]\nurl = "http://127.0.0.1:%s"\n[maintenance]\ntoggle = "%s/toggle/maintenance-mode-on"\n' "$2" "$3"
  if [ -n "${5:-}" ]; then printf 'dir = "%s"\n' "$5"; fi
  printf '[log]\naccess = false\nlevel = "warn"\n'
}

nginx_common() { # DIR : global part shared by every nginx instance
  local d=$1
  mkdir -p "$d/tmp"
  cat <<EOF
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 65536;
EOF
}

nginx_http_common() { # DIR
  local d=$1
  cat <<EOF
  access_log off;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
EOF
}

nginx_http_conf() { # DIR WORKERS CONNECTIONS : nginx's config around an http block whose body
  # comes on stdin (the global part, workers, events, nginx_http_common)
  nginx_common "$1"
  printf 'worker_processes %s;\nevents { worker_connections %s; }\nhttp {\n' "$2" "$3"
  nginx_http_common "$1"
  cat
  printf '}\n'
}

upstream_conf() { # DIR PORT : the app, nginx `return 200` with one worker
  nginx_http_conf "$1" 1 32768 <<EOF
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location / { return 200 "ok\n"; }
    # Connections the app accepted, for bench/upstream_conns.sh.
    location = /.upstream-status { stub_status; }
  }
EOF
}

nginx_proxy_conf() { # DIR PORT UPSTREAM_PORT : nginx proxy_pass with upstream keepalive, 2 workers
  nginx_http_conf "$1" "${WORKERS:-2}" 16384 <<EOF
  upstream app {
    server 127.0.0.1:$3;
    keepalive 512;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
EOF
}

nginx_page_locations() { # STATIC_DIR : the maintenance page's server lines but its listen lines:
  # every request answered 503 with the page (bench/h2load.sh uses them too)
  cat <<EOF
    root $1;
    error_page 503 /index.html;
    location = /index.html {
      internal;
      add_header Retry-After 600 always;
      add_header Cache-Control no-store always;
    }
    location / { return 503; }
EOF
}

nginx_page_conf() { # DIR PORT STATIC_DIR : nginx answering every request with 503 and the page
  # (error_page 503 /index.html + return 503), WORKERS workers (default 2)
  nginx_http_conf "$1" "${WORKERS:-2}" 16384 <<EOF
  types { text/html html; text/css css; image/svg+xml svg; }
  open_file_cache max=64 inactive=60s;
  open_file_cache_valid 60s;
  server {
    listen 127.0.0.1:$2 backlog=4096;
$(nginx_page_locations "$3")
  }
EOF
}

haproxy_conf() { # DIR PORT UPSTREAM_PORT : HAProxy with http-reuse always, 2 threads
  cat <<EOF
global
  nbthread ${WORKERS:-2}
  maxconn 8000
  pidfile $1/haproxy.pid
defaults
  mode http
  maxconn 8000
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$2
  default_backend app
backend app
  server up 127.0.0.1:$3
EOF
}
