"""An OpenAI-compatible stand-in for one cloud GPU inference server.

It answers like a real server would, at the speed a person sets: a time to first token plus a
time per output token, a concurrency limit like a GPU batch with a bounded queue beyond it, and
faults on demand (errors, slow answers, dropped connections, refused connections). The answer
text is derived from the request, so a test can tell answers apart. Several on different ports
make a pool.
"""

from cloud_stub.app import create_app
from cloud_stub.config import StubConfig

__all__ = ["StubConfig", "create_app"]
