"""Child services: a start that fails says why."""

from __future__ import annotations

import pytest

from hotcold.procs import ServiceProcess, ServiceStartError
from hotcold.serving import free_port


async def test_a_service_that_exits_at_start_is_reported_with_its_own_words() -> None:
    process = ServiceProcess("cloud_stub", free_port(), "--no-such-flag")
    try:
        with pytest.raises(ServiceStartError) as failed:
            await process.started(timeout_s=60)
    finally:
        process.stop()
    assert "unrecognized arguments: --no-such-flag" in str(failed.value)
