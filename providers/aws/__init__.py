"""AWS EC2 through boto3 (imported lazily), one job per module:

api.py       boto3 wrapped: the session and its clients, calls, paging, what an AWS error means
catalog.py   GPU instance types of a region and their prices (Pricing API, override, dated static
             table), spot prices, EBS storage
image.py     the AMI: the Deep Learning AMI through SSM, or the user's own, checked
network.py   VPC / subnet, the SSH-only security group, the run's key pair, and their cleanup
rates.py     what an instance bills per region besides compute: gp3, public IPv4, egress (dated tables)
consistency.py  EC2's eventual consistency: when a NotFound after our create/terminate is "not known yet"
instance.py  AWSProvider: the lifecycle calls; the self-destruct is providers/scripts/aws_self_destruct.sh

Importing this package does not import boto3; the first API call does.
"""

from providers.aws.catalog import PRICE_OVERRIDE_SOURCE, STATIC_PRICE_DATE, ebs_usd_per_hour
from providers.aws.image import DEFAULT_AMI_SSM_PARAMETER, DLAMI_SSM_PATH
from providers.aws.instance import TAG_OWNER, TAG_RUN_ID, AWSProvider, elapsed_seconds, termination_time

__all__ = [
    "DEFAULT_AMI_SSM_PARAMETER",
    "DLAMI_SSM_PATH",
    "PRICE_OVERRIDE_SOURCE",
    "STATIC_PRICE_DATE",
    "TAG_OWNER",
    "TAG_RUN_ID",
    "AWSProvider",
    "ebs_usd_per_hour",
    "elapsed_seconds",
    "termination_time",
]
