"""One module per OpenAI resource; each exposes `router`."""
