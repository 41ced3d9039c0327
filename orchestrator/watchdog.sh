#!/bin/sh
# gpurun dead-man's switch. Runs detached ON the instance and needs no controller.
#
# usage: watchdog.sh ROOT DEADLINE_EPOCH GRACE_S JOB_NAME [POLL_S]
#   ROOT/watchdog.deadline      the absolute deadline (epoch s). It may only move EARLIER: this
#                               script keeps the minimum it has ever seen and rewrites a later value.
#   ROOT/watchdog.armed         written by this script: the deadline it holds now (its acknowledgement)
#   ROOT/JOB_NAME.pid           the job's process group: SIGTERM at deadline - grace, SIGKILL at deadline
#   ROOT/watchdog.selfdestruct  run with sh at the deadline: the provider's own way to stop billing.
#                               Kept in a 0700 file, not on a command line, as it may hold a credential.
# Everything it says goes to stdout (ROOT/watchdog.log under gpurun's detached-job convention).
set -u
root=$1
deadline=$2
grace=$3
job=$4
poll=${5:-1}
retry_s=${GPURUN_WATCHDOG_RETRY_S:-60}
dfile="$root/watchdog.deadline"

say() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) watchdog: $*"; }
is_int() { case ${1:-} in '' | *[!0-9]*) return 1 ;; esac; return 0; }
write_deadline() { echo "$deadline" > "$dfile.tmp.$$" && mv -f "$dfile.tmp.$$" "$dfile"; }
# watchdog.armed = the deadline this process holds: how the controller knows a move took effect
ack() { echo "$deadline" > "$root/watchdog.armed.tmp.$$" && mv -f "$root/watchdog.armed.tmp.$$" "$root/watchdog.armed"; }
job_pid() { p=$(cat "$root/$job.pid" 2>/dev/null); is_int "$p" && echo "$p"; }
signal_job() { # $1 = TERM | KILL
    pid=$(job_pid) || { say "no $job.pid: no job to $1"; return; }
    if [ -e "$root/$job.exit" ]; then say "job $job already ended (exit $(cat "$root/$job.exit"))"; return; fi
    if kill -s "$1" -- "-$pid" 2>/dev/null || kill -s "$1" "$pid" 2>/dev/null; then
        say "sent SIG$1 to job $job (process group $pid)"
    else
        say "job $job (pid $pid) is not running"
    fi
}

is_int "$deadline" || { say "bad deadline '$deadline'"; exit 2; }
is_int "$grace" || { say "bad grace '$grace'"; exit 2; }
say "armed: deadline $deadline (in $((deadline - $(date +%s)))s), SIGTERM $grace s before, job '$job', pid $$"
termed=0
ack
while :; do
    seen=$(head -n 1 "$dfile" 2>/dev/null | tr -d ' \r')
    if is_int "$seen" && [ "$seen" -lt "$deadline" ]; then
        say "deadline moved earlier: $deadline -> $seen"
        deadline=$seen
        ack
    elif [ "$seen" != "$deadline" ]; then
        # later, garbage or missing: the deadline never moves later; put the real one back
        say "refused deadline '$seen' (later or invalid); keeping $deadline"
        write_deadline
    fi
    now=$(date +%s)
    if [ "$termed" = 0 ] && [ "$now" -ge $((deadline - grace)) ]; then
        say "deadline - ${grace}s reached: stopping the job"
        signal_job TERM
        termed=1
    fi
    [ "$now" -ge "$deadline" ] && break
    sleep "$poll"
done

signal_job KILL
say "deadline reached: running the self-destruct command"
# Keep at it while this machine is alive: a failed API call, or one that was accepted and did
# nothing, must not leave the meter running.
n=1
while :; do
    sh "$root/watchdog.selfdestruct" 2>&1
    rc=$?
    say "self-destruct attempt $n exited $rc; will run it again in ${retry_s}s if this machine is still up"
    n=$((n + 1))
    sleep "$retry_s"
done
