"""Using a trained model: `llmtune chat` (a terminal session) and `llmtune serve` (an OpenAI-compatible
HTTP server), both on one generation engine (engine.py) so they answer exactly as `eval --generate` does."""
