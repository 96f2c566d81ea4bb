"""Known providers: the type, base URL and key shape of each API rawgw has a preset for.

One table read by ``rawgw init --provider NAME`` (the config it writes) and by the
config loader (``key_format = "auto"`` checks a key's prefix only against the
official host of its vendor, where the prefix is known; anything else — a local
server, a proxy, a self-hosted model — may use any key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["OFFICIAL_KEY_PREFIXES", "PRESETS", "Preset"]


@dataclass(frozen=True, slots=True)
class Preset:
    """What ``rawgw init --provider NAME`` writes for one provider."""

    name: str  # the [providers.NAME] written
    type: str  # openai | openrouter | anthropic
    base_url: str
    env: str  # the environment variable its key is read from
    key_hint: str  # what its keys look like, for the printed instructions
    models: tuple[str, ...]
    example_model: str  # used in the printed curl example
    comment: str  # the header comment of the written file


PRESETS: Final[dict[str, Preset]] = {
    "openrouter": Preset(
        "openrouter",
        "openrouter",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
        "sk-or-...",
        ("*",),
        "deepseek/deepseek-chat-v3-0324",
        "OpenRouter: every model it lists, by its OpenRouter id (vendor/model).",
    ),
    "openai": Preset(
        "openai",
        "openai",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
        "sk-...",
        ("*",),
        "gpt-4o-mini",
        "OpenAI's own API.",
    ),
    "anthropic": Preset(
        "anthropic",
        "anthropic",
        "https://api.anthropic.com",
        "ANTHROPIC_API_KEY",
        "sk-ant-...",
        ("claude-*",),
        "claude-3-5-haiku-latest",
        "Anthropic: /v1/messages natively, and /v1/chat/completions through Anthropic's\n"
        "# OpenAI-compatible API (some OpenAI fields are ignored there; see the README).",
    ),
    "deepseek": Preset(
        "deepseek",
        "openai",
        "https://api.deepseek.com/v1",
        "DEEPSEEK_API_KEY",
        "sk-...",
        ("deepseek-*",),
        "deepseek-chat",
        "DeepSeek speaks the OpenAI API (type openai).",
    ),
    "gemini": Preset(
        "gemini",
        "openai",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        "GEMINI_API_KEY",
        "AIza...",
        ("gemini-*", "gemma-*", "text-embedding-*"),
        "gemini-2.0-flash",
        "Google Gemini through Google's OpenAI-compatible API (type openai, key as Bearer).",
    ),
}

# key_format = "auto": the prefix a key must have on its vendor's official host.
# Gemini keys (AIza...) are not checked: Google's endpoint also takes other credentials.
OFFICIAL_KEY_PREFIXES: Final[dict[str, tuple[str, str]]] = {
    "openrouter.ai": ("sk-or-", "an OpenRouter key"),
    "api.anthropic.com": ("sk-ant-", "an Anthropic key"),
    "api.openai.com": ("sk-", "an OpenAI key"),
    "api.deepseek.com": ("sk-", "a DeepSeek key"),
}
