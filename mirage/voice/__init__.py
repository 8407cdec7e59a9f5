"""Voice: a streaming DSP disguise (pitch + formant), the RVC neural path, and the pieces the served path uses.

- :mod:`mirage.voice.config`: presets, :func:`~mirage.voice.config.parse_voice`, server defaults (``MIRAGE_VOICE_ENABLE``)
- :mod:`mirage.voice.dsp`: the disguise (phase vocoder + cepstral envelope), streaming state that serialises
- :mod:`mirage.voice.convert`: the batch interface a VoiceConverter replica runs (chunks of many sessions)
- :mod:`mirage.voice.stream`: one session's side in the ingress (state, order, privacy-first fallback)
- :mod:`mirage.voice.pump`: that session's voice path as an asyncio task (one call in flight, deadline, in order)
- :mod:`mirage.voice.track`: the outgoing aiortc audio track built on the pump (drop-in for the pass-through track)
- :mod:`mirage.voice.rvc`: ContentVec + SwiftF0 + an RVC v2 generator, as ONNX
- :mod:`mirage.voice.audio`: WAV in/out (validated, atomic), PCM helpers

No Ray imports here (DESIGN.md §3).
"""
