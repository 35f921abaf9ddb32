"""tunery: the OpenAI fine-tuning workflow on your own hardware, with open models."""

__version__ = "0.1.0"
