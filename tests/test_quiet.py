"""Library load noise (torchao's "Failed to load ..." lines, torch's enum deprecation) is kept off a user's screen,
and only that noise: the other records of those loggers pass, and ``--debug`` / ``EVL_ECG_DEBUG=1`` shows it all
(issue 30). torchao need not be installed: the records are logged here under its logger's name."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from evl_ecg import quiet
from evl_ecg.quiet import library_noise_quieted, quiet_library_noise

NOISE = "Failed to load /usr/lib/python3/site-packages/torchao/_C_mxfp8.abi3.so: libcudart.so.12: cannot open file"
ENUM = "<enum 'Float8Granularity'> is an Enum subclass and is now natively supported by torch.compile"


@pytest.fixture(autouse=True)
def _filter_state(monkeypatch):
    """Each test starts from the state of a process that ran no command, and leaves it so."""
    monkeypatch.setattr(quiet._FILTER, "enabled", None)
    monkeypatch.setattr(quiet._FILTER, "depth", 0)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _shown(logger: str, message: str) -> bool:
    """Whether ``message`` logged on ``logger`` reaches a handler of that logger (torch's loggers do not propagate)."""
    log, handler = logging.getLogger(logger), _Collect()
    log.addHandler(handler)
    try:
        log.warning(message)
    finally:
        log.removeHandler(handler)
    return message in handler.messages


def test_torchao_load_failures_are_dropped_and_its_other_records_pass():
    quiet_library_noise()
    assert not _shown("torchao", NOISE)
    assert not _shown("torchao", "Skipping import of cpp extensions due to incompatible torch version")
    assert not _shown("torch.utils._pytree", ENUM)
    assert _shown("torchao", "int8 weight-only quantization changed 12 layers")  # not noise: it passes
    assert _shown("torch.utils._pytree", "some other pytree warning")
    assert _shown("evl_ecg.infer.export", NOISE)  # the same words from another logger are not its noise


def test_show_again_when_asked_for():
    quiet_library_noise()
    quiet_library_noise(False)
    record = logging.LogRecord("torchao", logging.WARNING, __file__, 1, NOISE, None, None)
    assert quiet._FILTER.filter(record)


def test_a_block_quiets_the_noise_only_inside_it_and_not_under_debug():
    assert _shown("torchao", NOISE)  # no command ran: a library user sees everything by default
    with library_noise_quieted():
        assert not _shown("torchao", NOISE)
        with library_noise_quieted():
            assert not _shown("torchao", NOISE)
        assert not _shown("torchao", NOISE)
    assert _shown("torchao", NOISE)
    quiet_library_noise(False)  # --debug
    with library_noise_quieted():
        assert _shown("torchao", NOISE)


@pytest.mark.parametrize(
    ("argv", "env", "shown"),
    [
        (["data", "--help"], {}, False),
        (["--debug", "data", "--help"], {}, True),
        (["data", "--help"], {"EVL_ECG_DEBUG": "1"}, True),
    ],
    ids=["plain", "--debug", "EVL_ECG_DEBUG"],
)
def test_every_command_drops_the_noise_unless_debug(monkeypatch, argv, env, shown):
    from evl_ecg.cli import app

    monkeypatch.delenv("EVL_ECG_DEBUG", raising=False)
    result = CliRunner().invoke(app, argv, env=env)
    assert result.exit_code == 0, result.output
    assert quiet._FILTER.enabled is (not shown)
    assert _shown("torchao", NOISE) is shown
    assert _shown("torchao", "a real torchao warning")
