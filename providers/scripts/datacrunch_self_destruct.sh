#!/bin/sh
# gpurun's DataCrunch (Verda) self-destruct: delete THIS instance through the public API.
#
#   datacrunch_self_destruct.sh BASE_URL INSTANCE_ID CREDENTIALS_FILE LIMIT_S PAUSE_S
#
# Run ON the instance by the dead-man's switch, with the controller gone. Where python3 exists it
# hands over to datacrunch_self_destruct.py beside it; otherwise the same loop with curl: token, look,
# delete (with every volume, permanently), until the API shows the instance deleting, discontinued
# or absent (exit 0) or LIMIT_S passes (exit 1).
# The token request body is the credential file itself (--data-binary @file) and the bearer header
# goes to curl on stdin (-K -), so neither the secret nor the token is ever in argv or the output.
# Needs only sh, curl, sed, tr, date and sleep (${0%/*}, not dirname, finds the python beside it).
set -u
if [ "$#" -ne 5 ]; then
    echo "gpurun self-destruct: usage: $0 BASE_URL INSTANCE_ID CREDENTIALS_FILE LIMIT_S PAUSE_S"
    exit 2
fi
here=${0%/*}
if command -v python3 >/dev/null 2>&1 && [ -f "$here/datacrunch_self_destruct.py" ]; then
    exec python3 "$here/datacrunch_self_destruct.py" "$@"
fi

B=$1
I=$2
F=$3
end=$(( $(date +%s) + ${4%.*} ))
p=${5%.*}                          # sleep takes whole seconds here
[ "${p:-0}" -ge 1 ] 2>/dev/null || p=1
rc=1
bearer() { printf 'header = "Authorization: Bearer %s"\n' "$1"; }
while [ "$(date +%s)" -lt "$end" ]; do
    t=$(curl -sS --max-time 20 -H 'Content-Type: application/json' --data-binary @"$F" "$B/oauth2/token" \
        | sed -n 's/.*"access_token"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
    if [ -n "$t" ]; then
        s=$(bearer "$t" | curl -sS --max-time 20 -w ' HTTP%{http_code}' -K - "$B/instances/$I")
        case "$s" in
            *HTTP404|*'"deleting"'*|*'"discontinued"'*)
                echo 'gpurun self-destruct: instance gone'; rc=0; break;;
        esac
        # Every volume: the OS volume and the instance's volume_ids (a volume left out is detached and
        # keeps billing: Go SDK InstanceActionRequest).
        o=$(printf '%s' "$s" | sed -n 's/.*"os_volume_id"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
        w=$(printf '%s' "$s" | sed -n 's/.*"volume_ids"[[:space:]]*:[[:space:]]*\[\([^]]*\)\].*/\1/p' \
            | tr -d ' ')
        v=${o:+\"$o\"}
        if [ -n "$w" ]; then v=${v:+$v,}$w; fi
        if [ -n "$v" ]; then
            d='{"id":["'"$I"'"],"action":"delete","volume_ids":['"$v"'],"delete_permanently":true}'
        else
            d='{"id":["'"$I"'"],"action":"delete"}'
        fi
        c=$(bearer "$t" | curl -sS --max-time 20 -o /dev/null -w '%{http_code}' -K - -X PUT \
            -H 'Content-Type: application/json' --data "$d" "$B/instances")
        echo "gpurun self-destruct: delete HTTP $c"
    else
        echo 'gpurun self-destruct: no token'
    fi
    sleep "$p"
    p=$(( p * 2 > 30 ? 30 : p * 2 ))
done
exit $rc
