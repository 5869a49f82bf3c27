"""Audio input: decode any common format to 16 kHz mono float32, and encode results as FLAC.

libsndfile (soundfile) decodes PCM containers and FLAC, whose lengths it reads exactly; compressed formats (MP3,
Ogg Vorbis and Opus, AAC/M4A, video containers, ...) go through FFmpeg (PyAV), libsndfile being the fallback:
libsndfile stops at the length it estimates for an MP3 without a length header, for two MP3s joined and for
chained Ogg streams (a 20 s file came back as 4.3 s, without an error). Channels are mixed by their mean and the
rate is converted with soxr, the same for every model component (the reference used two different loaders for
its two tokenizers; see docs/fidelity.md).

Modules: ``load`` (``load_audio``: any input to 16 kHz mono), ``decoders`` (which decoder reads a file),
``libsndfile`` and ``ffmpeg`` (the two decoders), ``resample`` (mixing to mono and resampling as blocks decode),
``segments`` (cutting segments of one recording), ``flac`` (encoding results). No torch: CPU-only workers import
this cheaply.
"""

from .decoders import decode
from .flac import encode_flac
from .libsndfile import EXACT_FORMATS, header_duration
from .load import MAX_INPUT_BYTES, AudioInput, load_audio, read_audio_file
from .resample import SAMPLE_RATE, to_mono
from .segments import EncodedAudio

__all__ = [
    "EXACT_FORMATS",
    "MAX_INPUT_BYTES",
    "SAMPLE_RATE",
    "AudioInput",
    "EncodedAudio",
    "decode",
    "encode_flac",
    "header_duration",
    "load_audio",
    "read_audio_file",
    "to_mono",
]
