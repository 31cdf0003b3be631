#!/usr/bin/env bash
# TLS audit of gatekeeper's HTTPS listener with testssl.sh, on loopback.
#
#   bench/testssl.sh            ECDSA P-256 and RSA 2048 certificates, full audit (~3-4 minutes)
#   bench/testssl.sh --quick    ECDSA only: protocols, cipher categories, ciphers per protocol (~1 minute)
#
# Options: --no-build (use the existing binary), --no-install (never call apt-get),
#          --keep (keep the work dir with the testssl reports, JSON and logs).
# Environment: GATEKEEPER_BIN, KEY_TYPES ("ec rsa").
#
# Generates a throwaway certificate with openssl, starts gatekeeper with a
# [tls] listener on 127.0.0.1 (port 0, read back from its log), runs
# `testssl --protocols --std --fs --cipher-per-proto --server-preference
# --server-defaults --vulnerable` against it, and prints a summary: SSLv2/SSLv3
# and TLS 1.0/1.1 offered or not, weak cipher categories, the suites offered
# per protocol, forward secrecy, vulnerabilities. Exits 1 when a check fails
# (SSLv2/3 or TLS 1.0/1.1 offered, a weak cipher offered, a vulnerability found).
# Findings about the certificate itself (self-signed, short validity, no
# OCSP/CRL) concern the test certificate, not gatekeeper, and are left out.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
unset RUST_LOG

QUICK=0 KEEP=0 BUILD=1 INSTALL=1
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --keep) KEEP=1 ;;
    --no-build) BUILD=0 ;;
    --no-install) INSTALL=0 ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done
if ((QUICK)); then
  KEY_TYPES=${KEY_TYPES:-ec}
  CHECKS=(--protocols --std --cipher-per-proto)
else
  KEY_TYPES=${KEY_TYPES:-ec rsa}
  CHECKS=(--protocols --std --fs --cipher-per-proto --server-preference --server-defaults --vulnerable)
fi
GK_BIN=${GATEKEEPER_BIN:-$ROOT/target/release/gatekeeper}

log() { printf '[testssl %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- install
SUDO=()
((EUID == 0)) || SUDO=(sudo)
missing=()
command -v testssl >/dev/null 2>&1 || command -v testssl.sh >/dev/null 2>&1 || missing+=(testssl.sh)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ((${#missing[@]})); then
  ((INSTALL)) || die "missing: ${missing[*]} (and --no-install given)"
  log "installing from Debian's packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
TESTSSL=$(command -v testssl || command -v testssl.sh)

# ---------------------------------------------------------------- build
if ((BUILD)) && [[ -z ${GATEKEEPER_BIN:-} ]]; then
  for try in 1 2 3; do
    log "cargo build --release (try $try)"
    if (cd "$ROOT" && cargo build --release --quiet); then break; fi
    ((try < 3)) || die "cargo build --release keeps failing"
    sleep 30
  done
fi
[[ -x $GK_BIN ]] || die "no gatekeeper binary at $GK_BIN"

# ---------------------------------------------------------------- work dir, cleanup
T=$(mktemp -d /tmp/gatekeeper-testssl.XXXXXX)
GK_PID=""
cleanup() {
  local rc=$? n
  trap - EXIT INT TERM
  if [[ -n $GK_PID ]]; then
    kill -TERM "$GK_PID" 2>/dev/null || true
    for ((n = 0; n < 50; n++)); do kill -0 "$GK_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$GK_PID" 2>/dev/null || true
    wait "$GK_PID" 2>/dev/null || true
  fi
  if ((KEEP)); then log "work dir kept: $T"; else rm -rf "$T"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# make_cert TYPE DIR : a self-signed certificate for localhost / 127.0.0.1
make_cert() {
  local kt=$1 d=$2
  local -a newkey
  case $kt in
    ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa) newkey=(-newkey rsa:2048) ;;
    *) die "unknown key type $kt (ec or rsa)" ;;
  esac
  openssl req -x509 "${newkey[@]}" -nodes -days 7 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$d/privkey.pem" -out "$d/fullchain.pem" 2>/dev/null || die "openssl req failed"
  chmod 600 "$d/privkey.pem"
}

# start_gk DIR : gatekeeper with a TLS listener, maintenance on (no upstream needed); sets GK_PID, TLS_PORT
start_gk() {
  local d=$1 n
  mkdir -p "$d/toggle"
  : >"$d/toggle/maintenance-mode-on"
  cat >"$d/gatekeeper.toml" <<EOF
listen = ["127.0.0.1:0"]

[upstream]
url = "http://127.0.0.1:9"

[maintenance]
toggle = "$d/toggle/maintenance-mode-on"

[tls]
listen = ["127.0.0.1:0"]
cert = "$d/fullchain.pem"
key = "$d/privkey.pem"

[log]
access = false
EOF
  "$GK_BIN" check -c "$d/gatekeeper.toml" >/dev/null || die "gatekeeper check rejects $d/gatekeeper.toml"
  "$GK_BIN" run -c "$d/gatekeeper.toml" 2>"$d/gatekeeper.log" &
  GK_PID=$!
  for ((n = 0; n < 150; n++)); do
    grep -q 'ready' "$d/gatekeeper.log" 2>/dev/null && break
    kill -0 "$GK_PID" 2>/dev/null || { cat "$d/gatekeeper.log" >&2; die "gatekeeper exited"; }
    sleep 0.1
  done
  TLS_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\) (https).*/\1/p' "$d/gatekeeper.log" | head -1)
  [[ -n $TLS_PORT ]] || { cat "$d/gatekeeper.log" >&2; die "no https listener in the log"; }
}

stop_gk() {
  kill -TERM "$GK_PID" 2>/dev/null || true
  wait "$GK_PID" 2>/dev/null || true
  GK_PID=""
}

# summarize JSON KEYTYPE : prints the summary; exit status 1 when a check fails
summarize() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
path, kt = sys.argv[1], sys.argv[2]
data = json.load(open(path))
if isinstance(data, dict):  # --jsonfile-pretty layout, just in case
    data = [f for s in data.get("scanResult", []) for v in s.values() if isinstance(v, list) for f in v]
by = {f["id"]: f for f in data}
def finding(i): return by.get(i, {}).get("finding", "(not tested)")
fails = []
def offered(i): return finding(i).startswith("offered")

print(f"== {kt.upper()} certificate ==")
print("protocols:")
for i, name in [("SSLv2", "SSLv2"), ("SSLv3", "SSLv3"), ("TLS1", "TLS 1.0"), ("TLS1_1", "TLS 1.1"),
                ("TLS1_2", "TLS 1.2"), ("TLS1_3", "TLS 1.3")]:
    print(f"  {name:8} {finding(i)}")
for i in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
    if i in by and offered(i):
        fails.append(f"{i} offered")
for i in ("TLS1_2", "TLS1_3"):
    if i in by and not offered(i):
        fails.append(f"{i} not offered")
if "ALPN_HTTP2" in by or "ALPN" in by:
    print(f"  ALPN     {finding('ALPN_HTTP2')}, {finding('ALPN')}")

cats = [("cipherlist_NULL", "NULL (no encryption)"), ("cipherlist_aNULL", "anonymous (aNULL)"),
        ("cipherlist_EXPORT", "EXPORT"), ("cipherlist_LOW", "LOW (64 bit, DES, RC2/RC4)"),
        ("cipherlist_3DES_IDEA", "3DES / IDEA"), ("cipherlist_AVERAGE", "obsolete CBC (AES, ARIA, ...)"),
        ("cipherlist_STRONG", "strong (AEAD)")]
print("cipher categories:")
for i, name in cats:
    print(f"  {name:32} {finding(i)}")
    if i != "cipherlist_STRONG" and i in by and offered(i):
        fails.append(f"weak ciphers offered: {name}")

suites = [f for f in data if f["id"].startswith("cipher-") or f["id"].startswith("cipher_x")]
if suites:
    print("suites offered (testssl -E):")
    for f in suites:
        cols = f["finding"].split()
        # "TLS 1.2   xc02c   ECDHE-ECDSA-AES256-GCM-SHA384   ECDH 253   AESGCM   256   TLS_ECDHE_..."
        print(f"  {cols[0]} {cols[1]:4} {cols[3]:32} {cols[-1]}")
    weak = [f["finding"] for f in suites if any(w in f["finding"] for w in ("CBC", "SHA1 ", "RC4", "DES", "NULL", "EXP"))
            and "GCM" not in f["finding"] and "POLY1305" not in f["finding"]]
    for w in weak:
        fails.append(f"non-AEAD suite offered: {w}")
if "PFS" in by or "FS" in by:
    fs = by.get("FS", by.get("PFS"))["finding"]
    curves = finding("FS_ECDHE_curves") if "FS_ECDHE_curves" in by else finding("PFS_ECDHE_curves")
    print(f"forward secrecy: {fs}; curves: {curves}")
if "cipher_order" in by:
    print(f"server cipher order: {finding('cipher_order')}; negotiated: {finding('protocol_negotiated')}, "
          f"{finding('cipher_negotiated')}")
if "sessionresumption_ticket" in by:
    print(f"session resumption: tickets {finding('sessionresumption_ticket')}, IDs {finding('sessionresumption_ID')}")

vuln_ids = ["heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego", "secure_client_renego", "CRIME_TLS",
            "BREACH", "POODLE_SSL", "fallback_SCSV", "SWEET32", "FREAK", "DROWN", "LOGJAM", "BEAST", "LUCKY13", "RC4"]
vulns = [by[i] for i in vuln_ids if i in by]
if vulns:
    print("vulnerabilities (testssl -U):")
    for f in vulns:
        print(f"  {f['id']:22} {f['severity']:8} {f['finding']}")
        # BREACH depends on the app's compression, not on TLS; testssl probes "/" which is our 503 page.
        if f["severity"] in ("MEDIUM", "HIGH", "CRITICAL") and f["id"] != "BREACH":
            fails.append(f"{f['id']}: {f['finding']}")

# Anything else rated MEDIUM or worse, except findings about the throwaway certificate.
skip = ("cert", "engine_problem", "DNS_CAArecord", "OCSP")
other = [f for f in data if f["severity"] in ("MEDIUM", "HIGH", "CRITICAL")
         and not f["id"].startswith(skip) and f["id"] not in vuln_ids]
for f in other:
    print(f"warning: {f['id']} ({f['severity']}): {f['finding']}")
    fails.append(f"{f['id']}: {f['finding']}")

if fails:
    print("RESULT: FAIL")
    for x in fails:
        print(f"  - {x}")
    sys.exit(1)
print("RESULT: PASS (no SSLv2/SSLv3, no TLS 1.0/1.1, no weak ciphers"
      + (", no vulnerability found" if vulns else "") + ")")
EOF
}

# ---------------------------------------------------------------- run
log "work dir $T; testssl: $("$TESTSSL" --version 2>/dev/null | grep -o 'testssl *[0-9.]*' | head -1 || echo "$TESTSSL")"
status=0
for kt in $KEY_TYPES; do
  d="$T/$kt"
  mkdir -p "$d"
  make_cert "$kt" "$d"
  start_gk "$d"
  log "$kt certificate: gatekeeper https on 127.0.0.1:$TLS_PORT; running testssl ${CHECKS[*]}"
  started=$SECONDS
  # testssl's own exit code counts findings; the summary judges them.
  "$TESTSSL" --quiet --color 0 --warnings off --nodns none --connect-timeout 5 --openssl-timeout 10 \
    "${CHECKS[@]}" --jsonfile "$d/testssl.json" "127.0.0.1:$TLS_PORT" >"$d/testssl.txt" 2>&1 || true
  log "$kt: testssl took $((SECONDS - started)) s (report: $d/testssl.txt)"
  stop_gk
  [[ -s $d/testssl.json ]] || { cat "$d/testssl.txt" >&2; die "testssl wrote no JSON"; }
  summarize "$d/testssl.json" "$kt" || status=1
  echo
done
exit "$status"
