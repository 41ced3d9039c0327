#!/bin/sh
# gpurun dead-man's switch. Runs detached ON the instance and needs no controller.
#
# usage: watchdog.sh ROOT DEADLINE_EPOCH GRACE_S JOB_NAME [POLL_S [IDLE_S [STALL_S [PROGRESS_FILE
#                   [PRE_JOB PRE_PROGRESS_FILE]]]]]
#   ROOT/watchdog.deadline      the absolute deadline (epoch s). It may only move EARLIER: this
#                               script keeps the minimum it has ever seen and rewrites a later value.
#   ROOT/watchdog.armed         written by this script: the deadline it holds now (its acknowledgement)
#   ROOT/JOB_NAME.pid           the job's process group: SIGTERM at deadline - grace, SIGKILL at deadline
#   ROOT/JOB_NAME.exit          written when the job ends (the detached-job convention)
#   ROOT/controller.heartbeat   touched by a live controller; its mtime is read with THIS machine's
#                               clock (the controller's touch runs here), so laptop clock skew is moot
#   ROOT/PROGRESS_FILE          what a working job grows (out/metrics.jsonl, or JOB_NAME.log)
#   ROOT/PRE_JOB.pid, .exit     a job that runs before JOB_NAME (a recipe's data preparation): it is
#                               the one watched until JOB_NAME starts; its progress is PRE_PROGRESS_FILE
#                               changing (progress.json, rewritten only when the preparer gets further)
#   ROOT/watchdog.prejob        "PRE_JOB PRE_PROGRESS_FILE", written by the controller once bootstrap has
#                               decided the data phase (the switch is armed before bootstrap, when it
#                               is not known yet); read until a pre-job is set
#   ROOT/watchdog.reason        written by this script: why it acted (stalled | idle | deadline)
#   ROOT/watchdog.selfdestruct  run with sh when it acts: the provider's own way to stop billing.
#                               Kept in a 0700 file, not on a command line, as it may hold a credential.
# Three reasons to act, each enough on its own (IDLE_S / STALL_S of 0 turn a rule off):
#   deadline  the money deadline: SIGTERM the job GRACE_S before, then self-destruct.
#   stalled   the job runs, but PROGRESS_FILE has not grown for STALL_S and no heartbeat came for
#             STALL_S: SIGTERM the job (it checkpoints), SIGKILL after GRACE_S; the idle rule follows.
#   idle      the job has ended, and neither it nor a heartbeat was seen for IDLE_S: self-destruct.
#             The outputs stay on disk until then for a returning controller (`gpurun sync`).
# A fresh heartbeat means a controller is watching: it handles stalls and teardown itself.
# Everything it says goes to stdout (ROOT/watchdog.log under gpurun's detached-job convention).
set -u
root=$1
deadline=$2
grace=$3
job=$4
poll=${5:-1}
idle_s=${6:-0}
stall_s=${7:-0}
progress=${8:-$job.log}
pre_job=${9:-}
pre_progress=${10:-}
cur=$job            # the job watched now: PRE_JOB until JOB_NAME has started
cur_progress=$progress
retry_s=${GPURUN_WATCHDOG_RETRY_S:-60}
dfile="$root/watchdog.deadline"
hbfile="$root/controller.heartbeat"
hbref="$root/watchdog.hbseen"

say() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) watchdog: $*"; }
is_int() { case ${1:-} in '' | *[!0-9]*) return 1 ;; esac; return 0; }
write_deadline() { echo "$deadline" > "$dfile.tmp.$$" && mv -f "$dfile.tmp.$$" "$dfile"; }
# watchdog.armed = the deadline this process holds: how the controller knows a move took effect
ack() { echo "$deadline" > "$root/watchdog.armed.tmp.$$" && mv -f "$root/watchdog.armed.tmp.$$" "$root/watchdog.armed"; }
# The first reason is the one that ended the run (a stalled job's instance later goes idle too).
set_reason() {
    [ -s "$root/watchdog.reason" ] && return
    echo "$1" > "$root/watchdog.reason.tmp.$$" && mv -f "$root/watchdog.reason.tmp.$$" "$root/watchdog.reason"
    say "reason: $1"
}
job_pid() { p=$(cat "$root/$cur.pid" 2>/dev/null); is_int "$p" && echo "$p"; }
# A zombie accepts kill -0 (PID 1 of some containers never reaps): it is not running.
alive() { kill -0 "$1" 2>/dev/null && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]; }
# none: not started yet; running; ended: exited (JOB.exit) or killed without a record (SIGKILL)
job_status() {
    if [ -e "$root/$cur.exit" ]; then echo ended; return; fi
    p=$(job_pid) || { echo none; return; }
    if alive "$p"; then echo running; else echo ended; fi
}
signal_job() { # $1 = TERM | KILL
    pid=$(job_pid) || { say "no $cur.pid: no job to $1"; return; }
    if [ -e "$root/$cur.exit" ]; then say "job $cur already ended (exit $(cat "$root/$cur.exit"))"; return; fi
    if kill -s "$1" -- "-$pid" 2>/dev/null || kill -s "$1" "$pid" 2>/dev/null; then
        say "sent SIG$1 to job $cur (process group $pid)"
    else
        say "job $cur (pid $pid) is not running"
    fi
}
mtime() { stat -c %Y "$1" 2>/dev/null || stat -f %m "$1" 2>/dev/null; }
# hb_at := when a controller was last seen, on this machine's clock. Without a usable stat, a
# heartbeat newer than our reference file counts as seen now (at most one poll late).
note_heartbeat() {
    [ -e "$hbfile" ] || return 0
    m=$(mtime "$hbfile")
    if is_int "$m"; then
        [ "$m" -gt "$hb_at" ] && hb_at=$m
    elif [ "$hbfile" -nt "$hbref" ]; then
        hb_at=$now
        : > "$hbref"
    fi
    return 0
}
size_of() { { wc -c < "$1"; } 2>/dev/null | tr -d ' '; }  # "" while the file does not exist
# The progress mark: the main job's file grows; the pre-job's is rewritten in place (its checksum).
mark_of() {
    if [ "$cur" = "$job" ]; then size_of "$1"; else { cksum < "$1"; } 2>/dev/null | tr -d ' '; fi
}
# The pre-job named later, in ROOT/watchdog.prejob (the switch was armed before bootstrap).
read_prejob() {
    [ -z "$pre_job" ] && [ -s "$root/watchdog.prejob" ] || return 0
    read -r n p < "$root/watchdog.prejob" || true
    case $n in '' | *[!A-Za-z0-9_-]*) say "bad pre-job '$n' in watchdog.prejob"; return 0 ;; esac
    case $p in '' | /* | *..*) say "bad progress file '$p' in watchdog.prejob"; return 0 ;; esac
    [ "$n" = "$job" ] && { say "bad pre-job '$n': the job itself"; return 0; }
    pre_job=$n
    pre_progress=$p
    say "pre-job $pre_job (progress: $pre_progress)"
}
# Watch the pre-job until the main job has a pid file; switching starts the rules afresh.
pick_job() {
    read_prejob
    new=$job
    newp=$progress
    if [ -n "$pre_job" ] && [ ! -e "$root/$job.pid" ] && [ -e "$root/$pre_job.pid" ]; then
        new=$pre_job
        newp=$pre_progress
    fi
    [ "$new" = "$cur" ] && return 0
    say "watching job $new (progress: $newp)"
    cur=$new
    cur_progress=$newp
    ended_at=""
    prog_size=x
    prog_at=""
    stall_term_at=""
    killed=0
}
later() { if [ "$1" -gt "$2" ]; then echo "$1"; else echo "$2"; fi; }

is_int "$deadline" || { say "bad deadline '$deadline'"; exit 2; }
is_int "$grace" || { say "bad grace '$grace'"; exit 2; }
is_int "$idle_s" || { say "bad idle window '$idle_s'"; exit 2; }
is_int "$stall_s" || { say "bad stall window '$stall_s'"; exit 2; }
case $progress in /* | *..*) say "bad progress file '$progress' (a path under $root)"; exit 2 ;; esac
case $pre_progress in /* | *..*) say "bad progress file '$pre_progress' (a path under $root)"; exit 2 ;; esac
started=$(date +%s)
say "armed: deadline $deadline (in $((deadline - started))s), SIGTERM $grace s before, job '$job', pid $$"
say "idle window ${idle_s}s, stall window ${stall_s}s (progress: $progress; 0 = rule off)"
termed=0
hb_at=$started   # arming counts as a sighting: the controller that armed us was alive then
: > "$hbref"
ended_at=""      # when this script first saw the job ended
prog_size=x      # the progress file's last size ("" while it does not exist)
prog_at=""       # when it last changed (or the job was first seen running)
stall_term_at="" # when the stall rule sent SIGTERM
killed=0
cause=deadline
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
    note_heartbeat
    pick_job
    if [ "$termed" = 0 ] && [ "$now" -ge $((deadline - grace)) ]; then
        say "deadline - ${grace}s reached: stopping the job"
        # A job that already ended is the controller's teardown under way: not ours to explain yet.
        [ "$(job_status)" = running ] && set_reason deadline
        signal_job TERM
        termed=1
    fi
    [ "$now" -ge "$deadline" ] && break
    case $(job_status) in
    running)
        size=$(mark_of "$root/$cur_progress")
        if [ -z "$prog_at" ] || [ "$size" != "$prog_size" ]; then
            prog_size=$size
            prog_at=$now
        fi
        if [ "$stall_s" -gt 0 ] && [ -z "$stall_term_at" ] && [ $((now - prog_at)) -ge "$stall_s" ] &&
            [ $((now - hb_at)) -ge "$stall_s" ]; then
            say "stalled: $cur_progress has not changed for $((now - prog_at))s and no controller for $((now - hb_at))s"
            set_reason stalled
            signal_job TERM
            stall_term_at=$now
        elif [ -n "$stall_term_at" ] && [ "$killed" = 0 ] && [ $((now - stall_term_at)) -ge "$grace" ]; then
            signal_job KILL
            killed=1
        fi
        ;;
    ended)
        if [ -z "$ended_at" ]; then
            ended_at=$now
            say "job $cur ended (exit $(cat "$root/$cur.exit" 2>/dev/null || echo unknown))"
        fi
        since=$(later "$ended_at" "$hb_at")
        if [ "$idle_s" -gt 0 ] && [ $((now - since)) -ge "$idle_s" ]; then
            say "idle: the job ended $((now - ended_at))s ago and no controller for $((now - hb_at))s"
            cause=idle
            break
        fi
        ;;
    esac
    sleep "$poll"
done

set_reason "$cause"
signal_job KILL
say "$cause: running the self-destruct command"
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
