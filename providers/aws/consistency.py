"""EC2's eventual consistency around an instance's create and terminate: when a NotFound is "not known yet".

"Eventual consistency in the Amazon EC2 API"
(https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html):
- "If you successfully run the RunInstances command, and then immediately run another command using
  the instance ID that was provided in the response of RunInstances, it may return an
  InvalidInstanceID.NotFound error. This does not mean the instance does not exist." That holds for
  DescribeInstances and for TerminateInstances.
- "If you get an InvalidInstanceID.NotFound error after running TerminateInstances, this does not
  mean that the instance was or will be terminated. Your instance could still be running."
- What to do: run the Describe command "using an exponential backoff algorithm ... starting with a
  couple of seconds of wait time, and increasing gradually up to a few minutes of wait time".

So this provider object remembers, per instance id, when it created the instance and when it asked
for its termination (monotonic clock). Within `window_s` of either, a NotFound is "not known yet":
`get` answers a pending-like, not-gone Instance (pending after a create, stopping after a
terminate), never `not_found`; a TerminateInstances answered NotFound right after the create did
nothing and is not "already gone". Past the window a NotFound is `not_found` again, and the
orchestrator's verification still needs the run's tag-filtered listing to be empty
(orchestrator/run/teardown.py). A terminated instance stays visible as `terminated` for a while
after it ends (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/terminating-instances.html), so
a NotFound long after a terminate is an instance EC2 no longer lists.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: How long after a create or a terminate a NotFound may be EC2 not knowing yet: the AWS page's
#: backoff goes "up to a few minutes"; five of them.
WINDOW_S = 300.0
#: The waits between the describe (or terminate) retries made inside one `get` / `terminate` call
#: on a NotFound within the window, before it answers "not known yet" (the caller polls again).
BACKOFF_S = (1.0, 2.0)
NOT_FOUND_CODE = "InvalidInstanceID.NotFound"


@dataclass
class Sightings:
    """When this provider object created, or asked EC2 to terminate, each instance."""

    window_s: float = WINDOW_S
    backoff_s: tuple[float, ...] = BACKOFF_S
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    created: dict[str, float] = field(default_factory=dict)
    terminated: dict[str, float] = field(default_factory=dict)

    def note_created(self, instance_id: str) -> None:
        self.created.setdefault(instance_id, self.clock())

    def note_created_ago(self, instance_id: str, age_s: float) -> None:
        """An instance created `age_s` ago by another process (the ledger's row says when)."""
        self.created.setdefault(instance_id, self.clock() - max(0.0, age_s))

    def note_terminate(self, instance_id: str) -> None:
        self.terminated[instance_id] = self.clock()

    def _recent(self, when: float | None) -> bool:
        return when is not None and self.clock() - when < self.window_s

    def created_recently(self, instance_id: str) -> bool:
        return self._recent(self.created.get(instance_id))

    def unsettled(self, instance_id: str) -> str:
        """"terminate" / "create" when a NotFound for the instance may mean "not known yet" (the
        later of the two events wins), "" when it means what it says."""
        if self._recent(self.terminated.get(instance_id)):
            return "terminate"
        if self.created_recently(instance_id):
            return "create"
        return ""

    def age_s(self, instance_id: str) -> float | None:
        """Seconds since the event that keeps the instance unsettled (None: none)."""
        which = self.unsettled(instance_id)
        when = self.terminated.get(instance_id) if which == "terminate" else self.created.get(instance_id)
        return None if when is None else round(self.clock() - when, 3)
