import io

import av
import numpy as np
import pytest
import soundfile as sf
import soxr
from audio_files import aac_bytes, scrambled_m4a

from gpa.audio import EncodedAudio, decode, encode_flac, load_audio
from gpa.errors import EmptyAudio, NonFiniteAudio, TooLongAudio, UnreadableAudio


def tone(seconds=0.5, rate=16000, freq=440.0, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def encoded(samples, rate, fmt, subtype=None):
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "FLOAT"), ("WAV", "DOUBLE"),
                                         ("FLAC", None), ("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", None)])
def test_soundfile_formats_decode_to_16k_mono(fmt, subtype, tmp_path):
    rate = 48000 if subtype == "OPUS" else 22050
    data = encoded(tone(1.0, rate), rate, fmt, subtype)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    for src in (data, str(path), path):
        out = load_audio(src)
        assert out.dtype == np.float32 and out.ndim == 1
        assert abs(len(out) - 16000) < 1200  # lossy codecs add priming samples
        assert 0.3 < np.abs(out).max() < 0.7


def test_m4a_goes_through_pyav(tmp_path):
    path = tmp_path / "x.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100, layout="stereo")
        samples = np.stack([tone(1.0, 44100), tone(1.0, 44100)])
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
        frame.rate = 44100
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(sf.LibsndfileError):
        sf.read(str(path))
    out = load_audio(str(path))
    assert abs(len(out) - 16000) < 1600 and 0.3 < np.abs(out).max() < 0.7


@pytest.mark.parametrize("fmt,subtype,sought", [("WAV", "PCM_16", True), ("FLAC", None, True),
                                                ("MP3", None, False), ("OGG", "VORBIS", False)])
def test_a_segment_decodes_exactly_what_cutting_the_whole_file_gives(fmt, subtype, sought):
    rate = 22050
    samples = np.stack([tone(3.0, rate, 300.0), tone(3.0, rate, 500.0)], axis=1)
    data = encoded(samples, rate, fmt, subtype)
    # sought: cut at the file's rate; else cut from the whole file as decoded to 16 kHz
    whole, whole_rate = decode(data, sample_rate=None if sought else 16000)
    audio = EncodedAudio(data)
    assert audio.sought == sought  # seeking MP3 or Vorbis would start the decoder cold: not sample-exact
    # in time order, overlapping, backwards (decoded from the start again), past the end
    for start, end in [(0.5, 1.25), (1.0, 2.0), (0.0, 0.01), (2.5, None), (2.5, -1), (1.0, 99.0), (2.99, None)]:
        segment, got_rate = audio.segment(start, end)
        last = None if end is None or end < 0 else int(round(end * whole_rate))
        assert got_rate == whole_rate, (start, end)
        assert np.array_equal(segment, whole[int(round(start * whole_rate)):last]), (start, end)
    with pytest.raises(EmptyAudio, match="requested segment"):
        audio.segment(5.0, 6.0)  # after the end of the file
    with pytest.raises(TooLongAudio, match="the segment is 2.5 s"):
        audio.segment(0.5, None, max_duration_s=2.0)  # open-ended: measured from the file's length


def test_a_segment_of_a_long_recording_costs_its_own_length_in_memory():
    import tracemalloc

    rate = 44100
    audio = EncodedAudio(encoded(np.zeros((60 * rate, 2), np.float32), rate, "FLAC"))  # one minute: 21 MB decoded
    tracemalloc.start()
    try:
        segment, _ = audio.segment(30.0, 31.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert segment.shape == (rate,) and peak < 4 * segment.nbytes + 2**20


def decoded_at_once(data: bytes, fmt: str) -> np.ndarray:
    """The file decoded in one piece (compressed formats by FFmpeg, PCM and FLAC by libsndfile), mixed and
    resampled in one call: what block-wise decoding must equal."""
    if fmt != "FLAC":
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            whole = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1).T
            rate = stream.rate
    else:
        whole, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = whole.mean(axis=1, dtype=np.float64).astype(np.float32)
    return soxr.resample(mono, rate, 16000, quality="VHQ")


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3", "M4A", "damaged OGG"])
def test_a_long_stereo_file_is_mixed_and_resampled_as_it_decodes(fmt):
    """A whole file costs about its 16 kHz mono result in memory, not its decoded channels at their own rate (an
    hour of 44.1 kHz stereo is 1.3 GB of float32; decoded at once, a multiple of that), and gives the same samples
    as decoding it at once. (Reading MP3 or a damaged Vorbis stream in blocks through soundfile's usual reads
    skipped samples: soundfile seeks after each read.)"""
    import tracemalloc

    rate = 44100
    samples = np.stack([tone(60.0, rate, 300.0), tone(60.0, rate, 500.0)], axis=1)
    if fmt == "M4A":
        data = aac_bytes(samples, rate)
    else:  # written in blocks: libsndfile's Vorbis encoder crashes on one long write
        buffer = io.BytesIO()
        with sf.SoundFile(buffer, "w", rate, 2, format=fmt.split()[-1]) as f:
            for i in range(0, len(samples), rate):
                f.write(samples[i:i + rate])
        data = buffer.getvalue()
        if fmt.startswith("damaged"):
            middle = len(data) // 2
            data = data[:middle] + bytes(2000) + data[middle + 2000:]
    expected = decoded_at_once(data, fmt.split()[-1])
    tracemalloc.start()
    try:
        out = load_audio(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(out) == len(expected) and np.array_equal(out, expected)
    assert peak < 2.5 * out.nbytes + 2**22, (peak, out.nbytes)


def test_joined_files_decode_to_their_whole_length():
    """Two MP3s or two Ogg files joined end to end (``cat``), an AAC stream whose rate changes midway, junk after
    the audio: libsndfile stopped at the first file's length (a row that was ok and half as long as its audio),
    and one converter for the whole stream played the second rate's samples as the first's."""
    mp3 = [encoded(tone(d, 22050), 22050, "MP3") for d in (1.0, 1.5)]
    ogg = [encoded(tone(d, 22050), 22050, "OGG", "VORBIS") for d in (1.0, 1.5)]
    for joined in (mp3[0] + mp3[1], ogg[0] + ogg[1]):  # (the second MP3's encoder delay stays: +0.1 s)
        assert len(load_audio(joined)) == pytest.approx(2.5 * 16000, abs=0.2 * 16000)
    rates = aac_bytes(tone(2.0, 44100), 44100, "adts") + aac_bytes(tone(2.0, 22050), 22050, "adts")
    out = load_audio(rates)
    assert len(out) == pytest.approx(4.0 * 16000, abs=0.2 * 16000)  # AAC priming: +0.1 s
    spectrum = np.abs(np.fft.rfft(out[-16000:]))  # the second part keeps its pitch (sped up, it would be 880 Hz)
    assert abs(np.argmax(spectrum) - 440) < 5
    assert len(load_audio(aac_bytes(tone(2.0), 16000, "adts") + bytes(100_000))) == pytest.approx(32000, abs=3200)


def test_damaged_packets_are_skipped_unless_most_are():
    """A few undecodable packets (a damaged stretch of an M4A) are skipped, as ``ffmpeg`` skips them: the row keeps
    the rest of its audio. A stream of which most packets do not decode (its audio data scrambled, its index
    intact) is not audio: before, it became an ok row of a few samples of noise or silence."""
    m4a = aac_bytes(np.stack([tone(5.0, 44100)] * 2, axis=1), 44100)
    data_at = m4a.index(b"mdat") + 4
    index_at = m4a.index(b"moov") - 4
    assert data_at < index_at  # PyAV writes the index last
    damaged = m4a[:data_at + 20_000] + bytes(3_000) + m4a[data_at + 23_000:]
    assert len(load_audio(damaged)) == pytest.approx(5.0 * 16000, abs=0.2 * 16000)
    kept = data_at + 2_000  # the first packets decode
    noise = np.random.default_rng(0).integers(0, 256, index_at - kept, dtype=np.uint8).tobytes()
    with pytest.raises(UnreadableAudio, match="packets do not decode"):
        load_audio(m4a[:kept] + noise + m4a[index_at:])


def test_a_flac_stream_of_unknown_length_is_decoded_not_refused():
    """A FLAC written to a pipe says 0 samples in its header; libsndfile reports its "unknown" (2**63 - 1)
    frames, which read as an over-long file and as a seekable length."""
    flac = bytearray(encoded(tone(3.0), 16000, "FLAC"))
    fields = int.from_bytes(flac[18:26], "big") & ~((1 << 36) - 1)  # STREAMINFO's total samples := 0
    flac[18:26] = fields.to_bytes(8, "big")
    assert sf.info(io.BytesIO(bytes(flac))).frames > 2**62
    whole = load_audio(bytes(flac), max_duration_s=3600)
    assert len(whole) == 48000
    segment, rate = EncodedAudio(bytes(flac)).segment(1.0, None, max_duration_s=10)
    assert rate == 16000 and np.array_equal(segment, whole[16000:])


def test_a_length_guessed_from_the_bit_rate_refuses_nothing():
    """FFmpeg guesses the length of a stream without an index from its first bit rate: 20 s of silence then 40 s
    of noise was "2015 s". Only exact headers (WAV, FLAC, ...) refuse a file before decoding; others are measured
    as they decode, keeping no more than the limit."""
    from gpa.audio import header_duration
    from gpa.audio.ffmpeg import pyav_duration

    noise = np.random.default_rng(0).standard_normal(16000 * 40).astype(np.float32) * 0.5
    data = aac_bytes(np.concatenate([np.zeros(16000 * 20, np.float32), noise]), 16000, "adts")
    with av.open(io.BytesIO(data)) as container:
        assert pyav_duration(container) > 200  # the guess
    assert header_duration(data) is None
    assert len(load_audio(data, max_duration_s=100)) == pytest.approx(60 * 16000, abs=1600)
    with pytest.raises(TooLongAudio, match="audio is 60.1 s; the limit is 30 s") as info:
        load_audio(data, max_duration_s=30)
    assert info.value.duration_s == pytest.approx(60.1, abs=0.1)  # counted to the end


@pytest.mark.parametrize("frames", [None, 0, 1000, 44100, 50000, 10**6])
@pytest.mark.parametrize("sample_rate", [None, 16000])
def test_a_wrong_length_estimate_changes_no_sample(frames, sample_rate):
    """Decoders that only estimate their length (a container's declared duration) fill a buffer of that size:
    too short, the rest is appended; too long, the buffer is shrunk."""
    from gpa.audio.resample import mix_blocks

    rate = 44100
    stereo = np.stack([tone(1.0, rate, 300.0), tone(1.0, rate, 700.0)], axis=1)
    blocks = [stereo[i:i + 3000] for i in range(0, len(stereo), 3000)]
    mono = stereo.mean(axis=1, dtype=np.float64).astype(np.float32)
    expected = mono if sample_rate is None else soxr.resample(mono, rate, sample_rate, quality="VHQ")
    out, out_rate = mix_blocks(iter(blocks), rate, sample_rate, frames=frames)
    assert out_rate == (sample_rate or rate) and np.array_equal(out, expected)


def test_segments_in_time_order_decode_a_compressed_file_once_holding_one_segment(monkeypatch):
    """Segments of a long MP3 or M4A (a job asks for them in time order) decode the file once, only as far as the
    last one ends, and hold one segment at a time: the file decoded whole was held by each decode worker (an hour
    of 44.1 kHz is 635 MB of mono float32; a day-long recording did not fit in memory)."""
    import tracemalloc

    import gpa.audio.segments

    opened = []
    chunks = gpa.audio.segments._forward_chunks
    monkeypatch.setattr(gpa.audio.segments, "_forward_chunks", lambda *a: opened.append(1) or chunks(*a))
    rate = 44100
    noise = np.random.default_rng(0).standard_normal(180 * rate).astype(np.float32) * 0.1
    for data in (encoded(noise, rate, "MP3"), aac_bytes(noise, rate)):
        whole, _ = decode(data, sample_rate=16000)  # 11.5 MB; 31.8 MB at 44.1 kHz
        audio = EncodedAudio(data)
        opened.clear()
        tracemalloc.start()
        try:
            for start in range(10, 100, 3):  # 3 s apart, 5 s long: overlapping
                segment, got_rate = audio.segment(start, start + 5.0)
                assert got_rate == 16000 and np.array_equal(segment, whole[start * 16000:(start + 5) * 16000])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert opened == [1]
        assert peak < 4 * segment.nbytes + 2**21, peak  # two segments and a few decoded blocks
        assert audio._forward.decoded < 0.6 * len(whole)  # stopped after the last segment's end
        # one that starts before the last one decodes from the start again; the file's end too
        assert np.array_equal(audio.segment(1.0, 2.0)[0], whole[16000:32000]) and len(opened) == 2
        assert np.array_equal(audio.segment(170.0, None)[0], whole[170 * 16000:])


def test_an_open_ended_segment_over_the_limit_is_counted_not_held():
    data = encoded(tone(20.0, 22050), 22050, "MP3")
    audio = EncodedAudio(data)
    with pytest.raises(TooLongAudio, match="the segment is 18.0 s; the limit is 5 s") as info:
        audio.segment(2.0, None, max_duration_s=5.0)
    assert info.value.duration_s == pytest.approx(18.05, abs=0.1)  # measured to the end of the file
    assert len(audio._forward.held) == 0  # nothing past the limit was kept
    assert len(audio.segment(3.0, 4.0, max_duration_s=5.0)[0]) == 16000  # the next segment decodes again
    with pytest.raises(TooLongAudio, match="the segment is 6.0 s"):
        audio.segment(5.0, 11.0, max_duration_s=5.0)


def test_a_scrambled_stream_is_unreadable_and_does_not_crash_the_process():
    data = scrambled_m4a()
    with pytest.raises(UnreadableAudio, match="packets do not decode"):
        load_audio(data)
    audio = EncodedAudio(data)  # a segment: unreadable too, before the end of the stream
    with pytest.raises(UnreadableAudio, match="packets do not decode"):
        audio.segment(5.0, 6.0)
    with pytest.raises(UnreadableAudio, match="packets do not decode"):  # the next one too, without decoding again
        audio.segment(7.0, 8.0)


def test_more_than_8_channels_and_7_1_decode_whole_through_ffmpeg():
    """PyAV counts a planar frame's planes by reading its pointers up to a NULL: 9 for 7.1, whatever lies past the
    array beyond 8 channels. A 7.1 Opus stream in Matroska was refused (a plane check), a 12-channel Vorbis file
    came back at random lengths as ok rows, and garbage AAC "of 38 channels" crashed the process: frames are read
    packed now."""
    from gpa.audio.ffmpeg import decode_with_pyav

    rate = 48000
    wide = np.stack([tone(3.0, rate, 200.0 + 50 * c) * (c + 1) / 12 for c in range(12)], axis=1)
    vorbis = encoded(wide, rate, "OGG", "VORBIS")
    expected = decoded_at_once(vorbis, "FLAC")  # libsndfile's decoder, mixed and resampled at once
    for _ in range(5):
        out, _ = decode_with_pyav(vorbis, 16000)
        assert len(out) == len(expected) and np.abs(out - expected).max() < 1e-5
    opus = encoded(wide[:, :8], rate, "OGG", "OPUS")
    mkv = io.BytesIO()
    with av.open(io.BytesIO(opus)) as source, av.open(mkv, "w", format="matroska") as target:
        stream = target.add_stream_from_template(source.streams.audio[0])
        for packet in source.demux(source.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    with pytest.raises(sf.LibsndfileError):
        sf.info(io.BytesIO(mkv.getvalue()))
    assert len(load_audio(mkv.getvalue())) == pytest.approx(3.0 * 16000, abs=400)
    assert len(EncodedAudio(mkv.getvalue()).segment(0.5, 1.5)[0]) == 16000


def test_a_segment_of_a_file_damaged_at_its_start_is_judged_by_the_whole_file():
    """The first segments of a file whose first packets are damaged see mostly undecodable packets so far; the
    file is judged as decode() judges it, on all its packets (here: a few in a hundred fail, so it is audio)."""
    rate = 44100
    m4a = bytearray(aac_bytes(tone(30.0, rate), rate))
    with av.open(io.BytesIO(bytes(m4a))) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.audio[0]) if p.size]
    rng = np.random.default_rng(3)
    for pos, size in packets[1:120]:  # 119 of 1293 packets (2.8 s)
        m4a[pos:pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    whole, _ = decode(bytes(m4a), sample_rate=16000)
    audio = EncodedAudio(bytes(m4a))
    for start, end in [(0.0, 0.5), (5.0, 6.0)]:  # the first one stops after 119 of ~141 packets failed
        assert np.array_equal(audio.segment(start, end)[0], whole[int(start * 16000):int(end * 16000)])


def test_segments_of_empty_and_unfinished_files():
    """An Ogg stream without samples is empty, not a loop between decoders; a WAV whose data size reads 0 (its
    recorder crashed before writing it) is decoded, not sought as a 0-frame file."""
    import struct

    with pytest.raises(EmptyAudio, match="no samples"):
        EncodedAudio(encoded(np.zeros(0, np.float32), 16000, "OGG", "VORBIS")).segment(0.0, 1.0)
    wav = bytearray(encoded(tone(2.0), 16000, "WAV", "PCM_16"))
    at = wav.index(b"data")
    wav[at + 4:at + 8] = struct.pack("<I", 0)
    assert len(load_audio(bytes(wav), start_s=0.5, end_s=1.5)) == 16000


def test_a_dropped_or_replaced_decoder_lets_go_of_its_file_at_once():
    import gc
    import weakref

    data = encoded(tone(10.0, 44100), 44100, "MP3")
    gc.disable()  # freed by reference counting, not by a later collection
    try:
        audio = EncodedAudio(data)
        audio.segment(5.0, 6.0)
        replaced = weakref.ref(audio._forward)
        audio.segment(1.0, 2.0)  # earlier: a new decoder
        dropped = weakref.ref(audio._forward)
        del audio
        assert replaced() is None and dropped() is None
    finally:
        gc.enable()


def test_channels_are_averaged_and_resampled_with_soxr():
    left, right = tone(1.0, 8000, 300.0), np.zeros(8000, np.float32)
    out = load_audio((np.stack([left, right], axis=1), 8000))
    assert len(out) == 16000
    ref = load_audio((left, 8000))
    np.testing.assert_allclose(out, ref / 2, atol=1e-6)


def test_integer_arrays_and_channel_first_arrays():
    pcm = (tone(0.1) * 32767).astype(np.int16)
    out = load_audio((pcm, 16000))
    np.testing.assert_allclose(out, tone(0.1), atol=1e-4)
    stereo_first = np.stack([tone(0.1), tone(0.1)])  # (channels, n)
    np.testing.assert_allclose(load_audio((stereo_first, 16000)), tone(0.1), atol=1e-6)


def test_segment_cut():
    out = load_audio((tone(2.0), 16000), start_s=0.5, end_s=1.5)
    assert len(out) == 16000
    assert len(load_audio((tone(2.0), 16000), start_s=0.5, end_s=-1)) == 24000


@pytest.mark.parametrize(
    "src,error",
    [
        (b"", EmptyAudio),
        (b"this is a text file, not a wav", UnreadableAudio),
        (encoded(tone(1.0), 16000, "WAV", "PCM_16")[:30], UnreadableAudio),
        ((np.zeros(0, np.float32), 16000), EmptyAudio),
        ((np.array([0.0, np.nan], np.float32), 16000), NonFiniteAudio),
        ((np.array([0.0, np.inf], np.float32), 16000), NonFiniteAudio),
        ("/nonexistent/file.wav", UnreadableAudio),
        (12345, UnreadableAudio),
    ],
)
def test_bad_input_raises_typed_errors(src, error):
    with pytest.raises(error) as info:
        load_audio(src)
    assert info.value.kind == error.kind
    assert "<_io" not in str(info.value)


def test_error_messages_never_show_uri_credentials():
    with pytest.raises(UnreadableAudio) as info:
        load_audio("file:///nonexistent/secret.wav?X-Amz-Signature=CANARY")
    assert "CANARY" not in str(info.value)


def test_flac_roundtrip():
    wave = tone(0.5)
    samples, rate = decode(encode_flac(wave))
    assert rate == 16000
    np.testing.assert_allclose(samples, wave, atol=1 / 32000)


def test_max_duration_refuses_long_audio_before_decoding_it(tmp_path, monkeypatch):
    import gpa.audio.load

    path = tmp_path / "long.wav"
    sf.write(path, tone(6.0, 8000, channels=2), 8000)
    decoded = []
    real = gpa.audio.load.decode  # load_audio's
    monkeypatch.setattr(gpa.audio.load, "decode",
                        lambda data, name="", **kw: decoded.append(name) or real(data, name=name, **kw))
    with pytest.raises(TooLongAudio, match=r"by its header\) is 6\.0 s; the limit is 3 s") as info:
        load_audio(str(path), max_duration_s=3.0)
    assert info.value.duration_s == pytest.approx(6.0) and info.value.kind == "too_long_audio"
    assert decoded == []  # refused from the header: never decoded
    assert len(load_audio(str(path), max_duration_s=6.0)) == 6 * 16000  # at the limit it loads
    # without a header to go by (samples in memory, or a segment), the decoded length decides
    with pytest.raises(TooLongAudio, match="audio is 6.0 s") as info:
        load_audio((tone(6.0, 8000), 8000), max_duration_s=3.0)
    assert info.value.duration_s == pytest.approx(6.0)
    with pytest.raises(TooLongAudio, match="the segment is 4.0 s"):
        load_audio(str(path), start_s=1.0, end_s=5.0, max_duration_s=3.0)
    assert len(load_audio(str(path), start_s=1.0, end_s=3.5, max_duration_s=3.0)) == 40000


def test_only_regular_files_are_read_and_reads_are_bounded(tmp_path):
    import os
    import socket
    import time

    from gpa.audio import read_audio_file

    os.mkfifo(tmp_path / "pipe.wav")  # nobody writes to it: a plain open would block forever
    started = time.monotonic()
    with pytest.raises(UnreadableAudio, match=r"pipe\.wav: not a regular file \(a FIFO\)"):
        load_audio(str(tmp_path / "pipe.wav"))
    assert time.monotonic() - started < 5
    with pytest.raises(UnreadableAudio, match=r"/dev/zero: not a regular file \(a device\)"):
        load_audio("/dev/zero")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock.wav"))
        with pytest.raises(UnreadableAudio, match=r"sock\.wav: not a regular file"):
            load_audio(str(tmp_path / "sock.wav"))
    data = encoded(tone(1.0), 16000, "WAV", "PCM_16")
    (tmp_path / "a.wav").write_bytes(data)
    assert read_audio_file(tmp_path / "a.wav", max_bytes=len(data)) == data
    with pytest.raises(UnreadableAudio, match=r"larger than the input size limit \(1000 bytes\)"):
        load_audio(str(tmp_path / "a.wav"), max_bytes=1000)


def test_a_bounded_read_of_an_object_checks_its_size_first(s3_bucket):
    import boto3

    from gpa.audio import read_audio_file

    data = encoded(tone(1.0), 16000, "WAV", "PCM_16")
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="a.wav", Body=data)
    assert read_audio_file(f"s3://{s3_bucket}/a.wav", max_bytes=len(data)) == data
    with pytest.raises(UnreadableAudio, match="larger than the input size limit"):
        read_audio_file(f"s3://{s3_bucket}/a.wav", max_bytes=len(data) - 1)


@pytest.mark.parametrize("start,end", [(float("nan"), None), (0.0, float("inf")), (float("-inf"), 1.0), ("x", None)])
def test_segment_times_that_are_not_finite_are_a_typed_error(start, end):
    from gpa.errors import InvalidSegment

    data = encoded(tone(1.0), 16000, "WAV", "PCM_16")
    with pytest.raises(InvalidSegment, match="must be a finite number of seconds") as caught:
        load_audio(data, start_s=start, end_s=end)
    assert caught.value.kind == "invalid_segment"
    with pytest.raises(InvalidSegment):
        EncodedAudio(data).segment(start, end)
    with pytest.raises(InvalidSegment):
        load_audio((tone(1.0), 16000), start_s=start, end_s=end)
