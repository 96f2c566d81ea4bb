"""What the imported configs mean by a provider name, and the Node gateway's built-in
model table (documented in its README, not in its .env, so the import supplies it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# provider name as the other gateways spell it -> (rawgw type, base_url). Every one but
# anthropic and openrouter is an OpenAI-compatible API (type openai).
KNOWN_PROVIDERS: Final[Mapping[str, tuple[str, str]]] = {
    "openai": ("openai", "https://api.openai.com/v1"),
    "openrouter": ("openrouter", "https://openrouter.ai/api/v1"),
    "anthropic": ("anthropic", "https://api.anthropic.com"),
    "claude": ("anthropic", "https://api.anthropic.com"),
    "deepseek": ("openai", "https://api.deepseek.com/v1"),
    "gemini": ("openai", "https://generativelanguage.googleapis.com/v1beta/openai"),
    "google": ("openai", "https://generativelanguage.googleapis.com/v1beta/openai"),
    "groq": ("openai", "https://api.groq.com/openai/v1"),
    "mistral": ("openai", "https://api.mistral.ai/v1"),
    "together": ("openai", "https://api.together.xyz/v1"),
    "fireworks": ("openai", "https://api.fireworks.ai/inference/v1"),
    "xai": ("openai", "https://api.x.ai/v1"),
    "perplexity": ("openai", "https://api.perplexity.ai"),
    "cerebras": ("openai", "https://api.cerebras.ai/v1"),
    "moonshot": ("openai", "https://api.moonshot.ai/v1"),
}


def known_provider(name: str) -> tuple[str, str] | None:
    return KNOWN_PROVIDERS.get(name.strip().lower())


def unknown_provider_fix() -> str:
    return (
        "known names: " + ", ".join(KNOWN_PROVIDERS) + "; for another OpenAI-compatible API, write it "
        'in gateway.toml by hand as [providers.NAME] type = "openai" with its base_url'
    )


# The Node OpenAI gateway's MODEL_MAPPING: the OpenAI names its clients send, and what it
# sent to OpenRouter (or, for gemini-*, to Google's API) instead.
NODE_OPENROUTER_ALIASES: Final[Mapping[str, str]] = {
    "gpt-3.5-turbo": "deepseek/deepseek-r1-0528:free",
    "gpt-3.5-turbo-16k": "deepseek/deepseek-r1-0528:free",
    "gpt-4": "deepseek/deepseek-r1-0528:free",
    "gpt-4-turbo": "deepseek/deepseek-r1-0528:free",
    "gpt-4o": "qwen/qwen3-235b-a22b:free",
    "gpt-4o-mini": "qwen/qwen3-next-80b-a3b-instruct:free",
    "gpt-5": "qwen/qwen3-235b-a22b:free",
    "gpt-5-turbo": "qwen/qwen3-next-80b-a3b-instruct:free",
    "gpt-5-preview": "qwen/qwen3-235b-a22b:free",
    "gpt-4-vision": "qwen/qwen3-vl-30b-a3b-thinking:free",
    "gpt-4-vision-preview": "qwen/qwen3-vl-235b-a22b-thinking:free",
    "gpt-4-code": "qwen/qwen3-coder:free",
    "mistral-small": "mistralai/mistral-small-3.1-24b-instruct:free",
    "llama-3.3": "meta-llama/llama-3.3-70b-instruct:free",
    "gemma-7b": "google/gemma-2-9b-it:free",
}
NODE_GEMINI_ALIASES: Final[Mapping[str, str]] = {
    "gemini-3-flash": "gemini-3-flash-preview",
    "gemini-3-pro": "gemini-3-pro-preview",
    "gemini-2.0-flash": "gemini-2.0-flash-exp",
}
