"""DataCrunch (renamed Verda) on the real `verda` SDK, imported only when a call needs it.

    api.py       the SDK client (authenticates at construction), one bounded call, errors, retries
    catalog.py   instance types, live prices (strings, kept exact), availability, storage price
    image.py     which OS images a type takes; the user's checked, a CUDA (+ PyTorch) one picked
    instance.py  DataCrunchProvider: create, get, terminate, list, cleanup, balance, self-destruct
The self-destruct itself is package data: providers/scripts/datacrunch_self_destruct.{sh,py}.
"""

from providers.datacrunch.api import (
    DataCrunchAPIError,
    DataCrunchInsufficientFunds,
    DataCrunchNoCapacity,
    DataCrunchNotFound,
    DataCrunchTransientError,
    ProvisioningRefusedError,
)
from providers.datacrunch.instance import DataCrunchProvider

__all__ = [
    "DataCrunchAPIError",
    "DataCrunchInsufficientFunds",
    "DataCrunchNoCapacity",
    "DataCrunchNotFound",
    "DataCrunchProvider",
    "DataCrunchTransientError",
    "ProvisioningRefusedError",
]
