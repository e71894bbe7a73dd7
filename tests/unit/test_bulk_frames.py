"""Large frames (object chunks): received into a buffer of their own, sent uncopied."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from cellfleet import _messages as m
from cellfleet._protocol import LARGE_FRAME, PING_FRAME, FrameDecoder, encode_frame


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0, 10, LARGE_FRAME - 1, LARGE_FRAME, 3 * LARGE_FRAME + 7]),
                min_size=1, max_size=5),
       st.lists(st.integers(4096, 2 * LARGE_FRAME), min_size=1, max_size=40))
def test_frames_large_and_small_come_out_whole_however_the_stream_is_cut(sizes, cuts):
    payloads = [os.urandom(n) for n in sizes]
    stream = b"".join(encode_frame(p) + PING_FRAME for p in payloads)
    decoder, frames, pos = FrameDecoder(), [], 0
    for cut in cuts * (len(stream) // sum(cuts) + 1):
        if pos >= len(stream):
            break
        frames += decoder.feed(stream[pos:pos + cut])
        pos += cut
    assert [bytes(f) for f in frames] == payloads
    assert decoder.pings == len(payloads) and decoder.buffered == 0


def test_a_message_ending_in_a_large_buffer_is_sent_as_that_buffer():
    chunk = os.urandom(m.BULK_BYTES + 5)
    view = memoryview(chunk)
    parts = m.encode_parts(m.Reply(view), 42)
    assert len(parts) == 2 and parts[1] is view  # not copied
    message, request_id = m.decode(b"".join(bytes(p) for p in parts))
    assert request_id == 42 and message.value == chunk
    small = m.encode_parts(m.ReadObjectChunk(b"x" * 20, 0, 10), 1)
    assert small == [m.encode(m.ReadObjectChunk(b"x" * 20, 0, 10), 1)]
