"""peft-tags: parameter-efficient fine-tuning for e-commerce product tagging."""

__version__ = "0.1.0"
