# gpurun's self-destruct for a RunPod pod: the on-instance watchdog runs it at the deadline.
#
# usage: sh runpod_self_destruct.sh PID1_ENVIRON API_URL [EXPECTED_POD_ID]
#   PID1_ENVIRON     where RunPod's RUNPOD_POD_ID / RUNPOD_API_KEY are read (/proc/1/environ): RunPod
#                    sets both for PID 1 only, ssh sessions do not inherit them. Our own account key
#                    is never put on the instance; the pod's key may act on this pod only.
#   API_URL          the GraphQL endpoint (https://api.runpod.io/graphql)
#   EXPECTED_POD_ID  the pod the controller created; a different id is reported, not refused.
#
# The key goes to curl on stdin (`--config -`) and to python3 through the environment, never on a
# command line that `ps` would show. Bounded: 5 tries, a 20 s timeout each.
# Exit: 0 terminate requested or pod already gone, 1 all tries failed, 2 no pod id / key, 3 no tool.

env_path=$1
url=$2
want=${3:-}

_gp_env() { tr '\000' '\n' 2>/dev/null <"$env_path" | sed -n "s/^$1=//p" | head -n 1; }

POD=$(_gp_env RUNPOD_POD_ID)
KEY=$(_gp_env RUNPOD_API_KEY)
case "$POD" in
  ''|*[!A-Za-z0-9_-]*) echo "gpurun self-destruct: no usable RUNPOD_POD_ID in $env_path" >&2; exit 2;;
esac
[ -n "$KEY" ] || { echo "gpurun self-destruct: no RUNPOD_API_KEY in $env_path" >&2; exit 2; }
[ -z "$want" ] || [ "$want" = "$POD" ] || echo "gpurun self-destruct: pod id $POD differs from $want" >&2

# The pod id is checked above (letters, digits, _ and -), so it is safe inside the query text.
BODY='{"query":"mutation { podTerminate(input: {podId: \"'"$POD"'\"}) }"}'

# python3's fallback when curl is missing: posts $GPURUN_BODY, prints the answer.
PY='import os, sys, urllib.request as u
r = u.Request(os.environ["GPURUN_URL"], data=os.environ["GPURUN_BODY"].encode(),
              headers={"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["GPURUN_KEY"]})
sys.stdout.write(u.urlopen(r, timeout=20).read().decode())'

i=0
while [ $i -lt 5 ]; do
  i=$((i+1))
  if command -v curl >/dev/null 2>&1; then
    OUT=$(printf 'header = "Authorization: Bearer %s"\n' "$KEY" | curl -sS -m 20 --config - \
      -H 'Content-Type: application/json' -X POST --data "$BODY" "$url" 2>&1)
  elif command -v python3 >/dev/null 2>&1; then
    OUT=$(GPURUN_BODY="$BODY" GPURUN_KEY="$KEY" GPURUN_URL="$url" python3 -c "$PY" 2>&1)
  elif command -v runpodctl >/dev/null 2>&1; then
    OUT=$(RUNPOD_API_KEY="$KEY" runpodctl remove pod "$POD" 2>&1 && echo '"podTerminate"')
  else
    echo "gpurun self-destruct: neither curl, python3 nor runpodctl is installed" >&2; exit 3
  fi
  case "$OUT" in
    *"not found to terminate"*) echo "gpurun self-destruct: pod $POD already gone"; exit 0;;
    *'"errors"'*) ;;
    *podTerminate*) echo "gpurun self-destruct: terminate requested for pod $POD"; exit 0;;
  esac
  echo "gpurun self-destruct: try $i failed: $(printf %s "$OUT" | head -c 300)" >&2
  sleep $((i*3))
done
exit 1
