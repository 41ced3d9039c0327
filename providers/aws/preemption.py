"""Did EC2 take a spot instance back? Read from the instance's StateReason, else its spot request.

EC2 reclaims ("interrupts") a spot instance for capacity, price (above the request's maximum: gpurun sends no MaxPrice, so the on-demand price) or a request
constraint, two minutes after a notice in the instance metadata (providers/scripts/
aws_spot_notice.sh reads that on the instance):
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-interruptions.html and
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html
Afterwards DescribeInstances says so in StateReason (Server.SpotInstanceTermination / ...Shutdown),
and DescribeSpotInstanceRequests in the request's Status.Code (instance-terminated-by-price, ...).
A termination we asked for (TerminateInstances: Client.UserInitiatedShutdown) or the on-instance
switch's `shutdown -h` (Client.InstanceInitiatedShutdown) is never a preemption.
"""

from __future__ import annotations

import logging
from typing import Any

from providers.aws.api import AWSApi, Tolerated
from providers.base import ProviderError
from providers.common import one_line

log = logging.getLogger("gpurun.providers.aws")

# StateReason codes of a spot interruption: botocore's ec2 model (StateReason.Message's docs) =
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StateReason.html
SPOT_STATE_REASONS = {
    "Server.SpotInstanceTermination": "terminated",
    "Server.SpotInstanceShutdown": "stopped",  # interruption behaviour `stop` (gpurun asks for terminate)
}
# Ends someone on our side asked for, per the same list: the API (our teardown, or a person in the
# console) and a shutdown from the instance's own OS (the dead-man's switch).
OUR_STATE_REASONS = ("Client.UserInitiatedShutdown", "Client.InstanceInitiatedShutdown")

# Spot request status codes of an interrupted instance ("Interrupted" in "State changes for a Spot
# request": https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instances-request-status-lifecycle.html;
# the codes: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-request-status.html).
# instance-terminated-by-user / instance-stopped-by-user are ours; marked-for-termination is the
# two-minute notice while the instance still runs: not taken back yet.
SPOT_REQUEST_INTERRUPTED = {
    "instance-terminated-by-price": "the spot price rose above the maximum price",
    "instance-terminated-no-capacity": "EC2 needed the spot capacity back",
    "instance-terminated-capacity-oversubscribed": "more spot requests than capacity at the maximum price",
    "instance-terminated-launch-group-constraint": "its launch group could no longer be kept",
    "instance-stopped-by-price": "the spot price rose above the maximum price",
    "instance-stopped-no-capacity": "EC2 needed the spot capacity back",
    "instance-stopped-capacity-oversubscribed": "more spot requests than capacity at the maximum price",
}

# Only an instance on its way down or down can have been taken back.
ENDED = ("shutting-down", "terminated", "stopping", "stopped")
# Answers of DescribeSpotInstanceRequests that leave only the StateReason to go on: the request
# aged out / unknown, or credentials without ec2:DescribeSpotInstanceRequests.
_REQUEST_UNREADABLE = ("InvalidSpotInstanceRequestID.NotFound", "UnauthorizedOperation")


def _reason_code(desc: dict[str, Any]) -> str:
    return str((desc.get("StateReason") or {}).get("Code") or "")


def _is_ended_spot(desc: dict[str, Any]) -> bool:
    return desc.get("InstanceLifecycle") == "spot" and (desc.get("State") or {}).get("Name") in ENDED


def spot_request_status(api: AWSApi, desc: dict[str, Any]) -> dict[str, Any] | None:
    """The spot request's Status ({Code, Message, UpdateTime}) of an ended spot instance whose
    StateReason does not already say who ended it; None when not needed or not readable.

    The instance describes its request as SpotInstanceRequestId (RunInstances with
    InstanceMarketOptions makes one). One extra call, only for an ended spot instance.
    """
    request_id = desc.get("SpotInstanceRequestId")
    code = _reason_code(desc)
    if not request_id or not _is_ended_spot(desc) or code in SPOT_STATE_REASONS or code in OUR_STATE_REASONS:
        return None
    try:
        got = api.call(
            "describe-spot-instance-requests", api.ec2.describe_spot_instance_requests,
            SpotInstanceRequestIds=[request_id], tolerate=_REQUEST_UNREADABLE,
        )
    except ProviderError as exc:  # a supplement to the StateReason: never fail a `get` over it
        log.info("aws: spot request %s of %s not read: %s", request_id, desc.get("InstanceId"), exc)
        return None
    if isinstance(got, Tolerated):
        return None
    requests = got.get("SpotInstanceRequests") or []
    return dict(requests[0].get("Status") or {}) if requests else None


def preempted(desc: dict[str, Any], request_status: dict[str, Any] | None = None) -> str:
    """One line when EC2 took this spot instance back, else "".

    Never for an end we asked for (OUR_STATE_REASONS), whatever the request says; a launch EC2
    ended before it booted is the caller's `boot_failure`, checked first.
    """
    if not _is_ended_spot(desc):
        return ""
    iid = desc.get("InstanceId")
    code = _reason_code(desc)
    if code in OUR_STATE_REASONS:
        return ""
    if code in SPOT_STATE_REASONS:
        return one_line(f"EC2 reclaimed spot instance {iid} ({code}: {SPOT_STATE_REASONS[code]} by EC2)", 200)
    status = str((request_status or {}).get("Code") or "")
    if status in SPOT_REQUEST_INTERRUPTED:
        return one_line(f"EC2 reclaimed spot instance {iid} (spot request {status}: "
                        f"{SPOT_REQUEST_INTERRUPTED[status]})", 200)
    return ""
