#!/bin/sh
# gpurun's watch for an EC2 spot interruption notice. Runs detached ON a spot instance.
#
# usage: sh aws_spot_notice.sh ROOT [JOB_NAME [SIGNAL]]
#   ROOT/JOB_NAME.pid   the job's process group (default JOB_NAME: job): sent SIGNAL (default USR1)
#                       once, when the notice comes. gpurun's trainer takes SIGUSR1 (like SIGTERM) as
#                       "checkpoint now and stop, exit 0" (trainer/train.py STOP_SIGNALS); it has no
#                       checkpoint-and-continue signal, and after the notice nothing is left to continue.
#   ROOT/JOB_NAME.exit  the job has ended: the notice is still recorded, nothing is signalled.
#   ROOT/spot.notice    written once (atomically) by this script: the notice's JSON as EC2 gave it,
#                       {"action": "terminate", "time": "2026-12-01T10:02:00Z"}. Its presence is what
#                       the controller reads as "EC2 is taking this instance back".
# Environment (for tests): GPURUN_IMDS_URL (default http://169.254.169.254),
#                          GPURUN_SPOT_POLL_S (default 5).
# Exits 0 once it has acted (recorded, and signalled or found the job ended); 2 on a bad argument.
#
# What AWS gives (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html):
# a notice two minutes before it stops or terminates a spot instance, as the instance metadata item
# latest/meta-data/spot/instance-action = {"action": "terminate"|"stop"|"hibernate", "time": ...},
# HTTP 404 while there is none; check every 5 seconds. gpurun launches with IMDSv2 required, so every
# read needs a session token: PUT latest/api/token with X-aws-ec2-metadata-token-ttl-seconds
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html).
# Fetches with curl, else wget, else python3 (the DLAMI has all three; a slim image may lack some).
set -u
root=${1:-}
job=${2:-job}
sig=${3:-USR1}
imds=${GPURUN_IMDS_URL:-http://169.254.169.254}
imds=${imds%/}
poll=${GPURUN_SPOT_POLL_S:-5}
notice="$root/spot.notice"
ttl=300

say() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) spot-notice: $*"; }
[ -n "$root" ] && [ -d "$root" ] || { say "usage: aws_spot_notice.sh ROOT [JOB_NAME [SIGNAL]] (no directory '$root')"; exit 2; }
case $job in '' | */* | *..*) say "bad job name '$job'"; exit 2 ;; esac
case $sig in USR1 | USR2 | TERM | INT) ;; *) say "bad signal '$sig' (USR1, USR2, TERM or INT)"; exit 2 ;; esac
case $poll in '' | *[!0-9.]*) say "bad GPURUN_SPOT_POLL_S '$poll'"; exit 2 ;; esac

if command -v curl > /dev/null 2>&1; then
    fetcher=curl
elif command -v wget > /dev/null 2>&1 && wget --help 2>&1 | grep -q -- --method; then
    # GNU wget: busybox's has no --method, so it could never PUT the IMDSv2 token request
    fetcher=wget
elif command -v python3 > /dev/null 2>&1; then
    fetcher=python3
else
    say "no curl, wget or python3: cannot read the instance metadata"
    exit 2
fi

# http METHOD URL HEADER VALUE: the body on stdout; non-zero on any failure, a 404 included.
http() {
    case $fetcher in
    curl)
        curl -fsS --connect-timeout 2 --max-time 3 -X "$1" -H "$3: $4" "$2" 2>/dev/null ;;
    wget)
        wget -q -T 3 -t 1 -O - --method="$1" --header="$3: $4" "$2" 2>/dev/null ;;
    python3)
        python3 - "$@" 2>/dev/null <<'EOF'
import sys
import urllib.request

method, url = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, method=method, data=b"" if method == "PUT" else None)
req.add_header(sys.argv[3], sys.argv[4])
with urllib.request.urlopen(req, timeout=3) as resp:  # a 404 raises: exit 1
    sys.stdout.write(resp.read().decode("utf-8", "replace"))
EOF
        ;;
    esac
}

# The notice, or non-zero while there is none (a fresh token each time: one PUT and one GET per poll).
read_notice() {
    token=$(http PUT "$imds/latest/api/token" X-aws-ec2-metadata-token-ttl-seconds "$ttl") || token=""
    [ -n "$token" ] || return 1
    body=$(http GET "$imds/latest/meta-data/spot/instance-action" X-aws-ec2-metadata-token "$token") || return 1
    case $body in *'"action"'*) printf '%s\n' "$body" ;; *) return 1 ;; esac
}

job_pid() {
    p=$(cat "$root/$job.pid" 2>/dev/null)
    case $p in '' | *[!0-9]*) return 1 ;; esac
    echo "$p"
}

say "watching $imds for a spot interruption notice every ${poll}s (job '$job', SIG$sig on notice; $fetcher)"
while [ ! -s "$notice" ]; do
    if body=$(read_notice); then
        printf '%s\n' "$body" > "$notice.tmp.$$" && mv -f "$notice.tmp.$$" "$notice"
        say "notice: $body"
        break
    fi
    sleep "$poll"
done

# The job may not have started yet (the notice came during bootstrap): signal it once it has.
while :; do
    if [ -e "$root/$job.exit" ]; then
        say "job $job already ended (exit $(cat "$root/$job.exit" 2>/dev/null)): nothing to signal"
        exit 0
    fi
    if pid=$(job_pid); then
        if kill -s "$sig" -- "-$pid" 2>/dev/null || kill -s "$sig" "$pid" 2>/dev/null; then
            say "sent SIG$sig to job $job (process group $pid)"
        else
            say "job $job (pid $pid) is not running"
        fi
        exit 0
    fi
    sleep "$poll"
done
