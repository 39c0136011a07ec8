#!/usr/bin/env bash
# Builds the Debian package with cpack from a build tree and checks it as dpkg would see it, without
# installing it: the control fields (name, version, Depends from dpkg-shlibdeps, no maintainer scripts),
# the files and the conffile, then the extracted programs themselves: --help, --print_config on the
# packaged flag file, a real start on the packaged model answered by the packaged client's health check
# and a clean SIGTERM drain, and `systemd-analyze verify` / `security` on the unit.
#
# Usage: deb_package_test.sh CPACK_CONFIG VERSION WITH_CUDA(0|1)
#   CPACK_CONFIG: ${CMAKE_BINARY_DIR}/CPackConfig.cmake; the package goes to a scratch folder.
# Exit 0: pass; 1: a check failed (each says which); 77: cpack or dpkg-deb missing (SKIP).
set -uo pipefail
config=${1:?usage: deb_package_test.sh CPACK_CONFIG VERSION WITH_CUDA}
version=${2:?version}
with_cuda=${3:-0}

for tool in cpack dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed (apt-get install cmake dpkg)"; exit 77; }
done

scratch=$(mktemp -d)
server_pid=""
cleanup() {
  [[ -n "$server_pid" ]] && kill -KILL "$server_pid" 2>/dev/null
  rm -rf "$scratch"
}
trap cleanup EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }

# --- build the package ---------------------------------------------------------------------------------
if ! cpack -G DEB --config "$config" -B "$scratch/out" >"$scratch/cpack.log" 2>&1; then
  cat "$scratch/cpack.log"
  echo "FAIL: cpack -G DEB --config $config"
  exit 1
fi
debs=("$scratch"/out/trams-serve_*.deb)
if [[ ${#debs[@]} -ne 1 || ! -f "${debs[0]}" ]]; then
  ls -l "$scratch/out"
  echo "FAIL: expected one trams-serve_*.deb from cpack"
  exit 1
fi
deb=${debs[0]}
ok "cpack made $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB)"

# --- control fields ---------------------------------------------------------------------------------------
field() { dpkg-deb -f "$deb" "$1"; }
[[ "$(field Package)" == trams-serve ]] || fail "Package: '$(field Package)', expected trams-serve"
[[ "$(field Version)" == "$version" ]] || fail "Version: '$(field Version)', expected $version (project())"
[[ "$(field Maintainer)" =~ ^.+\ \<.+@.+\>$ ]] || fail "Maintainer: '$(field Maintainer)' is not 'Name <email>'"
[[ -n "$(field Description)" ]] || fail "no Description"
depends=$(field Depends)
# dpkg-shlibdeps' work: the libraries the programs link, by their Debian package names.
for p in libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 libprometheus-cpp-pull1.0 libhiredis0.14 \
         libzstd1 libssl3 libc6 libstdc++6 libblis4-serial; do
  grep -Eq "(^|, )${p//+/\\+}( |,|$)" <<<"$depends" || fail "Depends lacks $p: $depends"
done
ok "control: $(field Package) $(field Version); Depends: $depends"

dpkg-deb -e "$deb" "$scratch/control"
for script in preinst postinst prerm postrm; do
  [[ -e "$scratch/control/$script" ]] && fail "maintainer script $script (none is needed: DynamicUser makes the user)"
done
grep -qx "/etc/trams-serve/trams-server.flags" "$scratch/control/conffiles" 2>/dev/null \
  || fail "conffiles does not list /etc/trams-serve/trams-server.flags: $(cat "$scratch/control/conffiles" 2>&1)"

# --- files --------------------------------------------------------------------------------------------
dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's#^\./#/#' >"$scratch/files"
expected=(/usr/bin/trams-server /usr/bin/trams-client /usr/bin/trams-eval
          /usr/share/trams-serve/models/trams-byte-books/config.json
          /usr/share/trams-serve/models/trams-byte-books/model.safetensors
          /usr/share/trams-serve/models/trams-byte-books/tokenizer.json
          /etc/trams-serve/trams-server.flags /usr/lib/systemd/system/trams-server.service)
module=/usr/lib/x86_64-linux-gnu/trams-serve/libtrams_cuda.so
if [[ "$with_cuda" == 1 ]]; then expected+=("$module"); fi
for f in "${expected[@]}"; do
  grep -qx "$f" "$scratch/files" || fail "the package lacks $f"
done
if [[ "$with_cuda" != 1 ]] && grep -q libtrams_cuda.so "$scratch/files"; then
  fail "built without CUDA, yet the package has a CUDA module"
fi
# Files owned by root (dpkg-deb would otherwise record the build user's ids).
if dpkg-deb -c "$deb" | awk '{print $2}' | grep -vqx root/root; then
  fail "files not owned by root/root: $(dpkg-deb -c "$deb" | grep -v ' root/root ' | head -3)"
fi
ok "files: ${#expected[@]} expected paths present, conffile listed"

# --- the extracted programs --------------------------------------------------------------------------------
root="$scratch/root"
dpkg-deb -x "$deb" "$root"
server="$root/usr/bin/trams-server"
client="$root/usr/bin/trams-client"
flags="$root/etc/trams-serve/trams-server.flags"
for prog in trams-server trams-client trams-eval; do
  if ldd "$root/usr/bin/$prog" | grep -q "not found"; then
    fail "$prog: $(ldd "$root/usr/bin/$prog" | grep 'not found' | head -3 | tr '\n' ' ')(installed RUNPATH?)"
  fi
done

# --help: Abseil's usage output, on stdout or stderr; Debian 12's Abseil ends --help with status 1.
"$server" --help >"$scratch/help" 2>&1
rc=$?
if [[ $rc -ne 0 && $rc -ne 1 ]]; then
  fail "trams-server --help exited $rc: $(head -3 "$scratch/help")"
elif ! grep -q -- "--model" "$scratch/help"; then
  fail "trams-server --help does not list --model: $(head -3 "$scratch/help")"
else
  ok "trams-server --help (status $rc) lists --model"
fi

# --print_config: the packaged flag file parses, and the server would run with the packaged model.
"$server" --flagfile="$flags" --print_config >"$scratch/config" 2>&1
rc=$?
if grep -q "print_config" "$scratch/config" && [[ $rc -ne 0 ]]; then
  fail "trams-server has no --print_config (status $rc): $(head -2 "$scratch/config")"
elif [[ $rc -ne 0 ]]; then
  fail "trams-server --flagfile=<packaged flags> --print_config exited $rc: $(head -5 "$scratch/config")"
elif ! grep -qx -- "--model=/usr/share/trams-serve/models/trams-byte-books" "$scratch/config"; then
  fail "--print_config on the packaged flag file does not say --model=/usr/share/trams-serve/models/trams-byte-books"
else
  ok "--print_config on the packaged flag file: $(grep -c '^--' "$scratch/config") flags"
fi

# trams-eval on the packaged model, and --device auto through the packaged CUDA module, found where the
# loader looks for an installed one (PREFIX/lib/<multiarch>/trams-serve/, no $TRAMS_CUDA_MODULE): the module
# must load (dlopen, entry point, API version), whether or not this machine has a GPU and driver.
printf 'The packaged model scores this line of text, byte by byte. ' >"$scratch/input.txt"
env -u TRAMS_CUDA_MODULE "$root/usr/bin/trams-eval" --device auto --json --input "$scratch/input.txt" \
  --model "$root/usr/share/trams-serve/models/trams-byte-books" >"$scratch/eval" 2>&1
rc=$?
if [[ $rc -ne 0 ]] || ! grep -q '"loss"' "$scratch/eval"; then
  fail "trams-eval on the packaged model exited $rc: $(tail -3 "$scratch/eval")"
elif [[ "$with_cuda" == 1 ]] && { grep -Eq "cannot load|not found at|not a trams CUDA module|does not serve" "$scratch/eval" \
                                   || ! grep -q "$root$module" "$scratch/eval"; }; then
  fail "the packaged CUDA module does not load: $(grep -m1 'CUDA' "$scratch/eval")"
else
  ok "trams-eval on the packaged model; $(grep -m1 -o 'CUDA: .*\|no CUDA device: [^(]*' "$scratch/eval")"
fi

# A real start: the packaged flags, model and client (the model and listen addresses pointed into the
# extraction and at a free loopback port), health SERVING, then SIGTERM drains and exits 0.
"$server" --flagfile="$flags" --model="$root/usr/share/trams-serve/models/trams-byte-books" \
  --listen=127.0.0.1:0 --metrics_listen= --port_file="$scratch/port" --device=cpu --threads=1 \
  --drain_grace_seconds=0 >"$scratch/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 300); do
  [[ -s "$scratch/port" ]] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
port=""
[[ -s "$scratch/port" ]] && read -r port _ <"$scratch/port"  # '<grpc port> <metrics port>'
if [[ -z "$port" ]]; then
  fail "the packaged server did not start: $(tail -5 "$scratch/server.log")"
elif ! "$client" --server "127.0.0.1:$port" --timeout 5s health >"$scratch/health" 2>&1; then
  fail "trams-client health against the packaged server: $(cat "$scratch/health")"
else
  ok "packaged server on the packaged model: health SERVING on port $port"
fi
if kill -0 "$server_pid" 2>/dev/null; then
  kill -TERM "$server_pid"
  for _ in $(seq 1 300); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$server_pid" 2>/dev/null; then
    fail "the packaged server did not exit within 30 s of SIGTERM"
  else
    wait "$server_pid"
    rc=$?
    [[ $rc -eq 0 ]] || fail "the packaged server exited $rc after SIGTERM: $(tail -3 "$scratch/server.log")"
  fi
fi
server_pid=""

# --- the systemd unit ---------------------------------------------------------------------------------
unit="$root/usr/lib/systemd/system/trams-server.service"
has() { grep -Eq "^$1\$" "$unit" || fail "trams-server.service lacks $1"; }
has "ExecStart=/usr/bin/trams-server --flagfile=/etc/trams-serve/trams-server.flags"
has "(DynamicUser=yes|User=[a-z].*)"
has "StateDirectory=trams-serve"
for opt in "ProtectSystem=strict" "ProtectHome=(yes|read-only|tmpfs)" "PrivateTmp=yes" "NoNewPrivileges=yes" \
           "Restart=on-failure"; do
  has "$opt"
done
# The stop timeout must outlast the drain the packaged flags ask for, plus writing sessions to the store.
grace=$(sed -n 's/^--drain_grace_seconds=//p' "$flags" | tail -1)
drain=$(sed -n 's/^--drain_seconds=//p' "$flags" | tail -1)
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}$/\1/p' "$unit" | tail -1)
if [[ -z "$stop" ]]; then
  fail "trams-server.service has no TimeoutStopSec in seconds (the default 90 s may be too short or too long)"
elif ((stop < ${grace:-1} + ${drain:-10} + 30)); then
  fail "TimeoutStopSec=$stop is shorter than drain_grace ($grace) + drain ($drain) + 30 s to write sessions"
fi

if command -v systemd-analyze >/dev/null; then
  # verify checks that ExecStart's program exists, so it reads a copy of the unit whose paths point into
  # the extraction (--root= needs a whole system tree with sysinit.target and the like).
  mkdir -p "$scratch/unit"
  sed -e "s#/usr/bin/#$root/usr/bin/#g; s#/etc/trams-serve/#$root/etc/trams-serve/#g" "$unit" \
    >"$scratch/unit/trams-server.service"
  if ! systemd-analyze verify "$scratch/unit/trams-server.service" >"$scratch/verify" 2>&1 || [[ -s "$scratch/verify" ]]; then
    fail "systemd-analyze verify trams-server.service: $(cat "$scratch/verify")"
  else
    ok "systemd-analyze verify: clean"
  fi
  # The sandbox as systemd scores it (0 = locked down, 10 = fully exposed); 1.6 when this was written.
  exposure=$(systemd-analyze security --offline=true "$scratch/unit/trams-server.service" 2>/dev/null \
             | sed -n 's/.*Overall exposure level for trams-server.service: \([0-9.]*\).*/\1/p')
  if [[ -z "$exposure" ]]; then
    echo "note: systemd-analyze security --offline gave no exposure level (systemd too old?)"
  elif awk -v e="$exposure" 'BEGIN { exit !(e > 3.0) }'; then
    fail "systemd-analyze security: exposure $exposure > 3.0 (a sandboxing option went missing)"
  else
    ok "systemd-analyze security: exposure $exposure"
  fi
else
  echo "note: systemd-analyze not installed: the unit was not verified (apt-get install systemd)"
fi

if ((failures)); then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
