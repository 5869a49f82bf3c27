"""GPA (General-Purpose Audio): ASR, voice-cloning TTS and voice conversion with one causal LM."""
