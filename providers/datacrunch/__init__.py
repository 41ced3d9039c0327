"""DataCrunch (renamed Verda) on the real `verda` SDK, imported only when a call needs it.

    api.py       the SDK client (authenticates at construction), one bounded call, errors, retries
    catalog.py   instance types, live prices (strings, kept exact), availability, storage price
    instance.py  DataCrunchProvider: create, get, terminate, list, cleanup, balance, self-destruct
The self-destruct itself is package data: providers/scripts/datacrunch_self_destruct.{sh,py}.
"""

from providers.datacrunch.api import (
    DataCrunchAPIError,
    DataCrunchNotFound,
    DataCrunchTransientError,
    ProvisioningRefusedError,
)
from providers.datacrunch.instance import DataCrunchProvider

__all__ = [
    "DataCrunchAPIError",
    "DataCrunchNotFound",
    "DataCrunchProvider",
    "DataCrunchTransientError",
    "ProvisioningRefusedError",
]
