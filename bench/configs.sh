# Config writers shared by the bench scripts (sourced, not run), so that every
# measurement puts nginx and HAProxy in the same configuration. Each prints a
# config; DIR is the instance's own directory (pid, logs, temp files).

free_port() { # a loopback port free now (for one server at a time; run.sh takes its ports at once)
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
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

upstream_conf() { # DIR PORT : the app, nginx `return 200` with one worker
  nginx_common "$1"
  cat <<EOF
worker_processes 1;
events { worker_connections 32768; }
http {
$(nginx_http_common "$1")
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location / { return 200 "ok\n"; }
    # Connections the app accepted, for bench/upstream_conns.sh.
    location = /.upstream-status { stub_status; }
  }
}
EOF
}

nginx_proxy_conf() { # DIR PORT UPSTREAM_PORT : nginx proxy_pass with upstream keepalive, 2 workers
  nginx_common "$1"
  cat <<EOF
worker_processes ${WORKERS:-2};
events { worker_connections 16384; }
http {
$(nginx_http_common "$1")
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
