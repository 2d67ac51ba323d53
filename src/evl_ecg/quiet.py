"""Library load noise kept off a user's screen, unless they ask for it (``evl-ecg --debug`` or ``EVL_ECG_DEBUG=1``).

Some libraries log at import time about things that do not concern the user of a command: torchao (the ``[edge]``
extra), which transformers imports whenever it is installed, logs one ``Failed to load .../_C_mxfp8...so`` line per
CUDA kernel library a CPU build of torch cannot load, and torch then logs that registering torchao's enums is
deprecated. :data:`LIBRARY_NOISE` lists those messages by logger; :func:`quiet_library_noise` drops them (only them:
any other warning of those libraries still shows) for the whole process, as ``evl-ecg`` does before every command,
and :func:`library_noise_quieted` for one block, as the Python API does around loading a model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

#: logger name -> substrings of the messages it logs while loading that are noise to a user.
LIBRARY_NOISE: dict[str, tuple[str, ...]] = {
    "torchao": ("Failed to load ", "Skipping import of cpp extensions"),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported", "register_constant()"),
}


class _LoadNoise(logging.Filter):
    """Drops the records of :data:`LIBRARY_NOISE` while ``enabled``."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled: bool | None = None  # True: drop, False: show (--debug), None: drop inside blocks only
        self.depth = 0  # open library_noise_quieted() blocks

    def filter(self, record: logging.LogRecord) -> bool:
        if self.enabled is False or (self.enabled is None and not self.depth):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is not ours to judge
            return True
        return not any(part in message for part in LIBRARY_NOISE.get(record.name, ()))


_FILTER = _LoadNoise()


def _install() -> None:
    for name in LIBRARY_NOISE:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def quiet_library_noise(enabled: bool = True) -> None:
    """Drop (``enabled``) or show again the load noise of :data:`LIBRARY_NOISE` in this process."""
    _install()
    _FILTER.enabled = enabled


@contextmanager
def library_noise_quieted() -> Iterator[None]:
    """Drop the load noise of :data:`LIBRARY_NOISE` inside the block (unless :func:`quiet_library_noise` was asked
    to show it, as ``--debug`` does)."""
    _install()
    _FILTER.depth += 1
    try:
        yield
    finally:
        _FILTER.depth -= 1


__all__ = ["LIBRARY_NOISE", "library_noise_quieted", "quiet_library_noise"]
