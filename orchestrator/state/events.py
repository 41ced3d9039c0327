"""The kinds of a run's non-phase events (the ledger's events.phase when is_phase = 0).

A phase change is recorded by `Ledger.set_phase` under the phase's own name; everything else a run
records goes through `Ledger.record_event` under one of these kinds.
"""

from __future__ import annotations

from enum import Enum


class EventKind(str, Enum):
    # controller: the launch, its nodes and its job
    ATTEMPT_FAILED = "attempt_failed"  # offer fallback: a boot failed; the next offer is tried
    PROVIDER_SWITCHED = "provider_switched"  # --provider any: the next offer is another provider's
    NODE_READY = "node_ready"  # a multi-node run's worker answered over SSH
    INSTALLED = "installed"  # packages installed on a node
    NODE_BOOTSTRAPPED = "node_bootstrapped"
    DATA_REUSED = "data_reused"  # the data was already on the instance
    DATA_SENT = "data_sent"  # --data-from rsync'ed and verified on the instance (bytes, seconds: the upload rate)
    DATA_STARTED = "data_started"
    NODE_DATA_STARTED = "node_data_started"
    DATA_READY = "data_ready"
    JOB_STARTED = "job_started"
    NODE_JOB_STARTED = "node_job_started"
    JOB_KILLED = "job_killed"  # the job outlived its grace period after the stop signal
    SYNC = "sync"  # outputs pulled home (bytes, seconds: the link's measured rate)
    STOP_MOVED = "stop_moved"  # the link is too slow for the reserve: the guard stops earlier
    LINK_TOO_SLOW = "link_too_slow"  # the first measure: one checkpoint does not fit in the reserve
    FINAL_CHECKPOINT_MISSING = "final_checkpoint_missing"  # the job's last checkpoint did not come home
    HANDOFF = "handoff"  # the controller left the run to the on-instance guard
    CONTROLLER_REPLACED = "controller_replaced"
    BUCKET_ARMED = "bucket_armed"  # --checkpoints-to: the uploader runs on the instance (no credential here)
    BUCKET_FINAL = "bucket_final"  # its last upload after the job: done, or cut off by the switch's time
    FINISH = "finish"
    NOTHING_TRAINED = "nothing_trained"  # a clean stop with no step and no checkpoint: a failed run
    NOTIFY_OFF = "notify_off"  # the notify: config could not be used
    NOTIFY_FAILED = "notify_failed"  # one notification could not be delivered
    ERROR = "error"
    # recovery: preemption and resume
    PREEMPTED = "preempted"
    RESUMING = "resuming"
    # teardown and sweep
    TERMINATE_REQUEST = "terminate_request"
    ORPHAN = "orphan"  # `gpurun sweep` found an instance this run (or no run) owns
    SWEEP_TERMINATING = "sweep_terminating"
    SWEEP_VERIFIED = "sweep_verified"
    SWEEP_FAILED_TERMINATING = "sweep_failed_terminating"
    CLEANUP_FAILED = "cleanup_failed"  # the provider's cleanup raised after the instances were verified gone
    CLEANUP_DONE = "cleanup_done"  # a later `gpurun audit --cleanup` finished it
    # money
    RECONCILED = "reconciled"  # the provider's own figure for the run's cost

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)
