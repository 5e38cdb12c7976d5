"""The example plugin tested with the fixtures convlens ships for plugin authors (``convlens.testing``)."""

from convlens.events import Frame, Result


def test_channel_mosaic_draws_one_frame_per_row(convlens_run, tiny_model, sample_image):
    events = convlens_run("channel_mosaic", tiny_model, sample_image, layer="conv2", count=6)
    assert len([e for e in events if isinstance(e, Frame)]) == 2  # 6 tiles in 3 columns
    assert [c["channel"] for c in events[-1].data["channels"]] == list(range(6))
    assert isinstance(events[-1], Result)
