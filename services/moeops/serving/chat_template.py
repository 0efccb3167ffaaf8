"""A conversation as the one prompt text the model sees: the chat template stored with the model.

`chat_template.json` beside the checkpoints (in the checkpoint root, with `tokenizer.json`) holds
{"message": ..., "generation_prompt": ...}: each message becomes `message` with `{role}` and `{content}` filled in
(plain replacement: braces in what users write are text, not fields), the pieces are joined, and
`generation_prompt` follows (where the assistant's answer starts). A model stored without one gets its tokenizer's
default: for the synthetic character tokenizer, whose examples are BOS prompt SEP answer EOS and whose alphabet has
no room for role markers, the messages' text back to back (the codec adds BOS and SEP); for a BPE tokenizer,
"role: content" lines and "assistant: ".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CHAT_TEMPLATE_FILE = "chat_template.json"


@dataclass(frozen=True)
class ChatTemplate:
    message: str = "{content}"
    generation_prompt: str = ""

    def render(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt text of (role, content) messages, ready for the assistant's answer."""
        parts = [self.message.replace("{role}", role).replace("{content}", content) for role, content in messages]
        return "".join(parts) + self.generation_prompt


CONTENT_ONLY = ChatTemplate()
"""The synthetic character tokenizer's default."""
ROLE_LINES = ChatTemplate(message="{role}: {content}\n", generation_prompt="assistant: ")
"""A BPE tokenizer's default."""


def load_chat_template(checkpoint_root: Path) -> ChatTemplate | None:
    """The template stored with the model, None when there is none; ValueError when it is not one."""
    path = checkpoint_root / CHAT_TEMPLATE_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) - {"message", "generation_prompt"}:
        raise ValueError(f"{path}: expected an object with message and generation_prompt")
    message, prompt = raw.get("message", "{content}"), raw.get("generation_prompt", "")
    if not isinstance(message, str) or not isinstance(prompt, str) or "{content}" not in message:
        raise ValueError(f"{path}: message must be text with {{content}}, generation_prompt text")
    return ChatTemplate(message, prompt)
