#!/bin/bash
# Collector pauses of the embedded user agent under positive-delivery load.
#
#   bash tools/gc_pauses.sh RATE SECONDS OUT.json [GEN0,GEN1,GEN2]
#
# Starts `tools/profile_stack.py serve ua-pd` with the collector tuned as `sipimdn listen` tunes
# it (or with the thresholds given, e.g. 700,5,20 to force full collections) on CPU 1, offers
# RATE positive-delivery MESSAGEs/s for SECONDS with bench/load/soak_client.py on CPU 0 (each
# from its own sender, IMDNs answered), stops the server with SIGTERM, and prints the client's
# counts and, per collector generation, the number of collections and the longest and total
# pause (the server's thread CPU and wall time), plus the tracked objects left by type.
# Loopback only; bounded by SECONDS plus the client's grace. PYTHON overrides the interpreter.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '2,12p' "$0"; exit 2
fi
rate=$1 seconds=$2 out=$3
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
export PROFILE_STACK_GC_TUNED=1 PROFILE_STACK_GC_LOG=$out
if [ $# -ge 4 ]; then export PROFILE_STACK_GC_THRESHOLDS=$4; fi
# Pinned with taskset when there are two CPUs (exec'd, so $! is the server itself).
on_cpu1=() on_cpu0=()
if command -v taskset > /dev/null && [ "$(nproc)" -ge 2 ]; then on_cpu1=(taskset -c 1) on_cpu0=(taskset -c 0); fi
serve_out=$(mktemp) client_out=$(mktemp)
trap 'rm -f "$serve_out" "$client_out"' EXIT
"${on_cpu1[@]}" "$python" "$here/tools/profile_stack.py" serve ua-pd > "$serve_out" 2>&1 &
server=$!
for _ in $(seq 100); do grep -q READY "$serve_out" && break; sleep 0.1; done
port=$(awk '/READY/{print $2; exit}' "$serve_out")
if [ -z "$port" ]; then kill "$server"; cat "$serve_out"; exit 1; fi
"${on_cpu0[@]}" "$python" "$here/bench/load/soak_client.py" 127.0.0.1 "$port" --rate "$rate" --duration "$seconds" > "$client_out"
kill -TERM "$server"; wait "$server" || true
"$python" - "$client_out" "$out" <<'PY'
import json
import sys

client = json.load(open(sys.argv[1]))
keys = ("sent", "ok", "unanswered", "imdns", "imdn_never", "imdn_late", "achieved",
        "ok_p50_us", "ok_p99_us", "imdn_after_200_p999_ms")
print("client", {k: client[k] for k in keys if k in client})
log = json.load(open(sys.argv[2]))
pauses = log["pauses"]  # (generation, wall ms, CPU ms, collected)
for generation in (0, 1, 2):
    mine = [p for p in pauses if p[0] == generation]
    if mine:
        print(f"generation {generation}: {len(mine)} collections, longest {max(p[2] for p in mine):.2f} ms CPU"
              f" / {max(p[1] for p in mine):.2f} ms wall, total {sum(p[2] for p in mine):.1f} ms CPU")
print("pauses over 10 ms: CPU", sum(p[2] > 10 for p in pauses), "wall", sum(p[1] > 10 for p in pauses))
print("tracked at the end", log["tracked"], "frozen", log["frozen"], "thresholds", log["thresholds"])
print("by type", log["histogram"][:10])
print("full collection at the end", round(log.get("full_collection_ms", 0.0), 2), "ms CPU;", log.get("visits"),
      "references visited; largest containers",
      log.get("big", []))
PY
