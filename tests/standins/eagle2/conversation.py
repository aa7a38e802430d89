"""Stand-in for the checkpoint's ``conversation.py``: ``get_conv_template(name)``.

Only the ChatML layout Eagle2-9B's Qwen2.5 backbone uses is provided (system
block, ``<|im_start|>role`` turns, ``<|im_end|>`` as the separator and the end of
a turn); the real file carries many templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Conversation:
    name: str
    system_message: str = ""
    roles: tuple[str, str] = ("<|im_start|>user\n", "<|im_start|>assistant\n")
    sep: str = "<|im_end|>"
    messages: list = field(default_factory=list)

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def get_prompt(self) -> str:
        text = f"<|im_start|>system\n{self.system_message}{self.sep}\n" if self.system_message else ""
        for role, message in self.messages:
            text += role + (f"{message}{self.sep}\n" if message is not None else "")
        return text


_TEMPLATES = {"qwen2-chat": "You are a helpful assistant."}


def get_conv_template(name: str) -> Conversation:
    if name not in _TEMPLATES:
        raise KeyError(f"stand-in conversation.py has no template {name!r}")
    return Conversation(name, system_message=_TEMPLATES[name])
