"""An oversized request is refused by the server's receive limit (`receive_limit`: twice the
largest valid request, at least 1 MiB) before it is parsed, and the server goes on."""

from __future__ import annotations

import grpc
import pytest
from persona.v1 import service_pb2 as pb

from services.serving.config import Limits
from services.serving.server import receive_limit
from tests.serving.support import Running

pytestmark = pytest.mark.integration


def test_oversized_request_is_refused_and_the_server_keeps_serving(running: Running) -> None:
    # The client's own send limit is lifted, so the server's receive limit is what refuses.
    target = running.channel._channel.target().decode()  # type: ignore[attr-defined]  # noqa: SLF001
    big_id = "u" * 1024
    n = receive_limit(Limits()) // len(big_id) + 64  # just over the server's limit
    opts = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(target, options=opts) as ch:
        stub = running.stub.__class__(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetEmbeddings(pb.GetEmbeddingsRequest(user_ids=[big_id] * n), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Traceback" not in (info.value.details() or "")
    info_resp = running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info_resp.dim > 0  # still serving
