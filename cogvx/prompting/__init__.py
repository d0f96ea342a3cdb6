"""Prompt extension: an instruct LLM rewrites short prompts in CogVideoX's caption style."""
