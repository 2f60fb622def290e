"""The local cascade's stages: VAD, turn detection, speech-to-text, reply model, text-to-speech."""
